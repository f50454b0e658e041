"""What training, evaluation and serving read from a run directory: the catalogue with its checked semantic IDs,
the split and the users' tokens."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.config import load_config
from genrec.data.batches import user_buckets
from genrec.data.prepare import load_prepared, prepare
from genrec.data.splits import leave_one_out
from genrec.errors import GenrecError
from genrec.ids.rqkmeans import add_collision_level
from genrec.rundir import RunDir
from genrec.workspace import load_workspace

from conftest import TINY
from synthetic import write_synthetic


@pytest.fixture
def prepared(tmp_path):
    """A run directory with only the prepare stage done (16 items), and its recipe (codebook size 4)."""
    write_synthetic(tmp_path / "data", num_users=30, items_per_kind=2)
    cfg = load_config(TINY, [f"run_dir={tmp_path / 'run'}", f"data.path={tmp_path / 'data'}",
                             "quantize.codebook_size=4"])
    run = RunDir(cfg.run_dir)
    prepare(cfg.data, run.prepared)
    return cfg, run


def write_sids(run: RunDir, sids: np.ndarray) -> None:
    run.stage("quantize").mkdir(parents=True, exist_ok=True)
    np.save(run.sids, sids)


def test_workspace_holds_the_catalogue_split_and_user_tokens(prepared):
    cfg, run = prepared
    dataset = load_prepared(run.prepared)
    N = dataset.num_items
    sids = add_collision_level(np.stack([np.arange(N) % 4, np.arange(N) // 8], axis=1))
    write_sids(run, sids)
    ws = load_workspace(cfg, run)
    assert ws.catalog.item_ids == dataset.item_ids and ws.catalog.items == dataset.items
    np.testing.assert_array_equal(ws.catalog.sids, sids)
    assert ws.catalog.level_sizes == [4, 4, 2] and ws.catalog.trie.num_items == N
    expected = leave_one_out(dataset.sequences)
    assert [t.tolist() for t in ws.split.train] == [t.tolist() for t in expected.train]
    assert ws.split.test.targets.tolist() == expected.test.targets.tolist()
    np.testing.assert_array_equal(ws.user_bucket, user_buckets(dataset.user_ids, cfg.model.tiger.num_user_buckets))
    assert ws.user_bucket.max() > 0  # the tiny recipe's Tiger has user tokens
    # a SASRec needs neither semantic IDs nor user tokens
    sasrec = load_config(TINY, [f"run_dir={run.root}", "model.kind=sasrec"])
    run.sids.unlink()
    ws = load_workspace(sasrec, run, with_sids=False)
    assert ws.catalog.sids is None and (ws.user_bucket == 0).all()


@pytest.mark.parametrize("damage, message", [
    ("missing", r"cannot read .*codes_with_suffix.npy \(FileNotFoundError\); rerun 'genrec quantize'"),
    ("rows", r"covers 3 items but the catalog has 16; rerun 'genrec quantize'"),
    ("codes", r"has codes >= quantize.codebook_size=4"),
    ("duplicates", r"two items share a semantic ID; rerun 'genrec quantize' \(or pass --force\) so that the extra "
                   r"level makes every ID unique"),
])
def test_semantic_ids_that_do_not_fit_the_catalogue_are_refused(prepared, damage, message):
    cfg, run = prepared
    N = 16
    good = add_collision_level(np.stack([np.arange(N) % 4, np.arange(N) // 8], axis=1))
    if damage == "rows":
        write_sids(run, good[:3])
    elif damage == "codes":
        bad = good.copy()
        bad[0, 1] = 4
        write_sids(run, bad)
    elif damage == "duplicates":
        write_sids(run, np.zeros((N, 3), dtype=np.int64))
    with pytest.raises(GenrecError, match=message):
        load_workspace(cfg, run)
