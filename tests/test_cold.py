"""The new-item protocol end to end on the tiny data: held-out items are in no training data (sequences, the
collab SASRec's embeddings, the quantizer's fit), get semantic IDs from the fitted quantizer, stay in the trie,
and their users are the cold slice of the results."""

from __future__ import annotations

import json

import numpy as np

from genrec.cli import main
from genrec.config import load_config
from genrec.data.cold import held_out_items, training_items
from genrec.data.prepare import load_prepared
from genrec.data.splits import make_split
from genrec.ids.rqkmeans import RQKMeans
from genrec.models.checkpoint import load_model
from genrec.rundir import RunDir
from genrec.workspace import load_workspace

from conftest import TINY


def test_held_out_items_are_new_to_every_stage_and_their_users_are_the_cold_slice(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    overrides = [f"run_dir={run_dir}", f"data.path={tiny_data}", "data.cold_items=0.25", "train.max_steps=40",
                 "train.eval_every=40", "train.warmup_steps=5", "train.batch_size=16", "collab.max_steps=40",
                 "collab.eval_every=20", "evaluate.dtype=float32", "evaluate.methods=[generative,exact]"]
    assert main(["run", "-c", str(TINY), *overrides]) == 0
    cfg = load_config(TINY, overrides)
    dataset = load_prepared(run_dir / "prepare")
    held = held_out_items(dataset, cfg.data)
    split = make_split(dataset, cfg.data)
    assert held.sum() == 16 and not training_items(split.train, 64)[held].any()
    # the collab SASRec never saw them: each one's vector is borrowed from its text neighbours
    collab = json.loads((run_dir / "collab" / "summary.json").read_text())
    assert collab["cold_items"] >= 16
    # the quantizer was fitted without them and encodes them as it would any new item
    summary = json.loads((run_dir / "quantize" / "summary.json").read_text())
    assert summary["fitted_items"] == 48 and summary["num_items"] == 64
    quantizer = RQKMeans.load(run_dir / "quantize", num_levels=cfg.quantize.num_levels,
                              codebook_size=cfg.quantize.codebook_size)
    vectors = np.load(run_dir / "collab" / "item_embeddings_l2norm.npy")
    codes = np.load(run_dir / "quantize" / "codes.npy")
    np.testing.assert_array_equal(codes[held], quantizer.encode(vectors[held]))
    # they have unique IDs in the trie, so beam search can reach them
    ws = load_workspace(cfg, RunDir(run_dir))
    assert len(np.unique(ws.catalog.sids, axis=0)) == 64
    assert sorted(ws.catalog.trie.leaf_item.tolist()) == list(range(64))  # every item a leaf, held-out ones too
    np.testing.assert_array_equal(load_model(run_dir / "train" / "best").item_codes.numpy(), ws.catalog.sids)
    # the cold slice: exactly the users whose target is not a training item
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    for name, eval_set in (("valid", split.valid), ("test", split.test)):
        cold_users = int((~training_items(split.train, 64)[eval_set.targets]).sum())
        assert results["cold_users"][name] == cold_users >= held[eval_set.targets].sum() > 0
        for method in ("generative", "exact"):
            for metric in ("recall@5", "ndcg@10"):
                all_, in_, cold = (results["metrics"][f"{name}/{method}{s}/{metric}"] for s in ("", "/in", "/cold"))
                n = results["users"][name]
                assert abs(all_ * n - in_ * (n - cold_users) - cold * cold_users) < 1e-9  # the slices add up
