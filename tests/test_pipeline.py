"""The CLI end to end on the tiny recipe: stages, skipping, forcing, recommend, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from genrec.cli import main

from conftest import REPO, TINY


def stamp_ids(run_dir) -> dict[str, str]:
    return {s: json.loads((run_dir / s / "stage.json").read_text())["id"]
            for s in ("prepare", "embed", "collab", "quantize", "train", "evaluate")}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_data):
    """One complete tiny run, shared by the tests of this module (copy it before changing it)."""
    run_dir = tmp_path_factory.mktemp("tiny-run") / "run"
    overrides = [f"run_dir={run_dir}", f"data.path={tiny_data}", "train.max_steps=80", "train.eval_every=40",
                 "train.warmup_steps=5", "train.batch_size=16"]
    assert main(["run", "-c", str(TINY), *overrides]) == 0
    return run_dir, overrides


def test_run_writes_every_artifact_and_metrics(finished_run, capsys):
    run_dir, _ = finished_run
    for path in ["config.yaml", "prepare/items.jsonl", "prepare/sequences.npz", "prepare/stats.json",
                 "embed/item_embeddings_raw.npy", "embed/item_embeddings_l2norm.npy", "embed/item_ids.json",
                 "embed/embedding_stats.json", "collab/item_embeddings_raw.npy", "collab/item_embeddings_l2norm.npy",
                 "collab/item_ids.json", "collab/summary.json", "collab/sasrec/best/model.safetensors",
                 "quantize/codes.npy", "quantize/codes_with_suffix.npy",
                 "quantize/centroids_0.npy", "quantize/summary.json", "train/best/config.json",
                 "train/best/model.safetensors", "train/log.jsonl", "evaluate/results.json"]:
        assert (run_dir / path).exists(), path
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob("*.partial"))
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    metrics = results["metrics"]
    for split in ("valid", "test"):
        for method in ("generative", "exact"):
            for k in (5, 10, 20):
                assert 0.0 <= metrics[f"{split}/{method}/ndcg@{k}"] <= metrics[f"{split}/{method}/recall@{k}"] <= 1.0
    assert results["users"] == {"valid": 120, "test": 120}
    # the synthetic data is learnable: far above chance (10 of 64 items = 0.16)
    assert metrics["test/exact/recall@10"] > 0.35


def test_second_run_skips_everything_and_changes_rerun_downstream(finished_run, tmp_path):
    run_dir, overrides = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    overrides = [o for o in overrides if not o.startswith("run_dir=")] + [f"run_dir={copy}"]
    before = stamp_ids(copy)
    assert main(["run", "-c", str(TINY), *overrides]) == 0
    assert stamp_ids(copy) == before
    assert main(["run", "-c", str(TINY), *overrides, "evaluate.beam_size=10", "evaluate.ks=[5,10]"]) == 0
    after = stamp_ids(copy)
    assert [after[s] == before[s] for s in before] == [True, True, True, True, True, False]
    assert main(["run", "-c", str(TINY), *overrides, "collab.max_steps=40"]) == 0
    after = stamp_ids(copy)
    assert [after[s] == before[s] for s in before] == [True, True, False, False, False, False]
    before = after
    assert main(["quantize", "-c", str(TINY), *overrides, "--force"]) == 0
    assert stamp_ids(copy)["quantize"] != before["quantize"]
    assert main(["run", "-c", str(TINY), *overrides]) == 0  # train and evaluate follow the new IDs
    final = stamp_ids(copy)
    assert final["train"] != before["train"] and final["prepare"] == before["prepare"]


def test_semantic_ids_come_from_the_collaborative_embeddings(finished_run, tmp_path):
    """collab writes the item embeddings of its selected SASRec (rarely seen items borrowed from their text
    neighbours), centred and normalised, and quantize clusters them; with collab.enabled=false quantize reads
    the text embeddings and collab leaves only its stamp."""
    from genrec.checkpoint import load_model
    from genrec.collab import borrow_from_text_neighbours, item_counts
    from genrec.config import load_config
    from genrec.prepare import load_prepared
    from genrec.splits import make_split

    run_dir, overrides = finished_run
    cfg = load_config(TINY, overrides)
    weights = load_model(run_dir / "collab" / "sasrec" / "best").item_emb.weight.detach().numpy()[:-1]  # [N, D]
    dataset = load_prepared(run_dir / "prepare")
    cold = item_counts(make_split(dataset, cfg.data).train, len(weights)) < cfg.collab.min_item_count
    text = np.load(run_dir / "embed" / "item_embeddings_l2norm.npy")
    raw = borrow_from_text_neighbours(weights, text, cold, cfg.collab.text_neighbours)
    np.testing.assert_allclose(np.load(run_dir / "collab" / "item_embeddings_raw.npy"), raw, atol=1e-6)
    centred = raw - raw.mean(0)
    expected = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(run_dir / "collab" / "item_embeddings_l2norm.npy"), expected, atol=1e-6)
    best = json.loads((run_dir / "collab" / "summary.json").read_text())
    assert best["cold_items"] == int(cold.sum()) and best["best_valid/sasrec/ndcg@10"] > 0.0
    summary = json.loads((run_dir / "quantize" / "summary.json").read_text())
    assert summary["embeddings"] == "collab/item_embeddings_l2norm.npy"
    assert summary["dim"] == weights.shape[1]

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    overrides = [o for o in overrides if not o.startswith("run_dir=")] + [f"run_dir={copy}", "collab.enabled=false", "train.distill=0"]
    assert main(["run", "-c", str(TINY), *overrides, "train.max_steps=10", "train.eval_every=10"]) == 0
    assert sorted(p.name for p in (copy / "collab").iterdir()) == ["stage.json"]
    summary = json.loads((copy / "quantize" / "summary.json").read_text())
    assert summary["embeddings"] == "embed/item_embeddings_l2norm.npy"


def test_recommend_by_history_and_user(finished_run, capsys):
    run_dir, overrides = finished_run
    items = [json.loads(line)["item_id"] for line in (run_dir / "prepare" / "items.jsonl").open()]
    assert main(["recommend", "-c", str(TINY), *overrides, "--history", items[0], items[1], "-k", "5", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in recs] == [1, 2, 3, 4, 5]
    assert not {r["item_id"] for r in recs} & {items[0], items[1]}  # history items excluded by default
    assert all(recs[i]["score"] >= recs[i + 1]["score"] for i in range(4))
    assert all("Glow & Co" in r["title"] for r in recs)
    assert main(["recommend", "-c", str(TINY), *overrides, "--user", "U00003", "-k", "3"]) == 0
    assert "log p" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--history", "NOPE1", "NOPE2"], "unknown item IDs in the history: NOPE1, NOPE2"),
    (["--user", "nobody"], "user 'nobody' is not in"),
    (["--history", "S00000", "-k", "0"], "k must be at least 1"),
])
def test_recommend_bad_input(finished_run, capsys, args, message):
    _, overrides = finished_run
    assert main(["recommend", "-c", str(TINY), *overrides, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_model_from_another_catalogue_is_refused(finished_run, tmp_path, capsys):
    run_dir, overrides = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    codes = np.load(copy / "quantize" / "codes_with_suffix.npy")
    np.save(copy / "quantize" / "codes_with_suffix.npy", codes[::-1].copy())  # other semantic IDs
    overrides = [o for o in overrides if not o.startswith("run_dir=")] + [f"run_dir={copy}"]
    assert main(["evaluate", "-c", str(TINY), *overrides, "--force"]) == 2
    err = capsys.readouterr().err
    assert "trained on a different catalogue" in err and "genrec train --force" in err
    assert not (copy / "evaluate.tmp").exists()


def test_missing_data_is_one_line_and_leaves_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", "-c", str(TINY), f"run_dir={run_dir}", f"data.path={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err and "data.path" in err
    assert not (run_dir / "prepare").exists() and not (run_dir / "prepare.tmp").exists()


def test_stage_without_its_input_says_what_to_run(tmp_path, capsys):
    assert main(["train", "-c", str(TINY), f"run_dir={tmp_path / 'run'}"]) == 2
    assert "run 'genrec quantize' first" in capsys.readouterr().err


def test_unknown_config_key_is_one_line(capsys):
    assert main(["run", "-c", str(TINY), "train.learning_rate=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "valid keys: batch_size, lr" in err


def test_console_script_runs_the_tiny_recipe(tmp_path, tiny_data):
    """The README's command shape, as a user types it (installed console script, fresh process)."""
    genrec = shutil.which("genrec") or str(REPO / ".venv" / "bin" / "genrec")
    out = subprocess.run([genrec, "run", "-c", str(TINY), f"run_dir={tmp_path / 'run'}", f"data.path={tiny_data}",
                          "train.max_steps=10", "train.eval_every=10", "train.warmup_steps=2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test/generative" in out.stdout and "R@10" in out.stdout
    assert sys.executable  # the same interpreter's environment ran it


def test_cold_items_borrow_the_mean_of_their_text_neighbours():
    from genrec.collab import borrow_from_text_neighbours, item_counts

    # items 0..4; item 4 is in no sequence, item 3 in one (twice in it: counted once)
    assert item_counts([np.array([0, 1, 3, 3]), np.array([1, 2, 0]), np.array([], dtype=np.int64)], 5).tolist() == \
        [2, 2, 1, 1, 0]
    angle = np.array([0.0, 0.1, 1.5, 3.0, 0.05])
    text = np.stack([np.cos(angle), np.sin(angle)], 1).astype(np.float32)  # item 4 lies between items 0 and 1
    collab = np.arange(10, dtype=np.float32).reshape(5, 2)
    cold = np.array([False, False, False, True, True])
    out = borrow_from_text_neighbours(collab, text, cold, k=2, chunk=1)
    np.testing.assert_array_equal(out[:3], collab[:3])  # warm rows untouched
    np.testing.assert_allclose(out[4], (collab[0] + collab[1]) / 2)  # nearest warm by text: 0 and 1
    np.testing.assert_allclose(out[3], (collab[2] + collab[1]) / 2)  # angle 3.0: nearest 2 (1.5), then 1 (0.1)
    np.testing.assert_array_equal(borrow_from_text_neighbours(collab, text, np.zeros(5, bool), k=2), collab)
