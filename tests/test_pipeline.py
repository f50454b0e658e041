"""The CLI end to end on the tiny recipe: stages, skipping, forcing, the printed results, recommend, the
collaborative semantic IDs, and bad input."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY
from tiny_tiger import brute_force_scores

from genrec.cli import main
from genrec.config import load_config
from genrec.data.batches import Batch, user_buckets
from genrec.data.prepare import load_prepared
from genrec.data.splits import make_split
from genrec.errors import GenrecError
from genrec.ids.catalog import Catalog
from genrec.ids.collab import borrow_from_text_neighbours, item_counts
from genrec.models.checkpoint import check_catalog, load_model
from genrec.models.sasrec import SASRec
from genrec.rundir import RunDir
from genrec.search import beam_search
from genrec.serve.recommender import Recommender
from genrec.workspace import load_workspace


def printed_metrics(stdout: str) -> list[dict[str, str]]:
    """The results tables `genrec evaluate` prints (one per protocol), each as metric key -> the text printed
    for it ('-': not reported)."""
    lines = stdout.splitlines()
    tables = []
    for start in (i for i, line in enumerate(lines) if line.startswith("split/method")):
        columns = [({"R": "recall", "N": "ndcg"}[c[0]], c.split("@")[1]) for c in lines[start].split()[1:]]
        assert set(lines[start + 1]) == {"-"}
        out = {}
        for line in lines[start + 2 :]:
            if not line.strip() or line.startswith("not reported"):
                break
            row, *values = line.split()
            assert len(values) == len(columns), line
            out.update({f"{row}/{metric}@{k}": v for (metric, k), v in zip(columns, values)})
        tables.append(out)
    return tables


def assert_table_is_results(stdout: str, results: dict) -> None:
    """Every number printed is the one in results.json, to the 4 places printed, under each protocol (history
    removed, then kept), and nothing is missing."""
    tables = printed_metrics(stdout)
    assert len(tables) == 2 and "history items removed" in stdout and "history items kept" in stdout
    for printed, key in zip(tables, ("metrics", "metrics_with_history")):
        shown = {metric: text for metric, text in printed.items() if text != "-"}
        assert shown.keys() == results[key].keys()
        for metric, text in shown.items():
            assert text == f"{results[key][metric]:.4f}", metric
        assert {metric for metric, text in printed.items() if text == "-"} == results["omitted"].keys()
    for key, reason in results["omitted"].items():
        head, k = key.rsplit("/", 1)[0], key.rsplit("@", 1)[1]
        assert f"not reported: {head} @{k}: {reason}" in stdout


def stamp_ids(run_dir) -> dict[str, str]:
    return {s: json.loads((run_dir / s / "stage.json").read_text())["id"]
            for s in ("prepare", "embed", "collab", "quantize", "train", "evaluate")}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_data):
    """One complete tiny run, shared by the tests of this module (copy it before changing it). Evaluated in
    float32 on every machine (not bfloat16 where the CPU has it), so that its metrics can be recomputed exactly."""
    run_dir = tmp_path_factory.mktemp("tiny-run") / "run"
    overrides = [f"run_dir={run_dir}", f"data.path={tiny_data}", "train.max_steps=80", "train.eval_every=40",
                 "train.warmup_steps=5", "train.batch_size=16", "evaluate.dtype=float32", "evaluate.rankings_k=20"]
    assert main(["run", "-c", str(TINY), *overrides]) == 0
    return run_dir, overrides


def test_run_writes_every_artifact_and_metrics(finished_run, capsys):
    run_dir, overrides = finished_run
    for path in ["config.yaml", "prepare/items.jsonl", "prepare/sequences.npz", "prepare/stats.json",
                 "embed/item_embeddings_raw.npy", "embed/item_embeddings_l2norm.npy", "embed/item_ids.json",
                 "embed/embedding_stats.json", "collab/item_embeddings_raw.npy", "collab/item_embeddings_l2norm.npy",
                 "collab/item_ids.json", "collab/summary.json", "collab/sasrec/best/model.safetensors",
                 "quantize/codes.npy", "quantize/codes_with_suffix.npy",
                 "quantize/centroids_0.npy", "quantize/centroids_1.npy", "quantize/summary.json",
                 "train/best/config.json", "train/best/model.safetensors", "train/log.jsonl", "evaluate/results.json"]:
        assert (run_dir / path).exists(), path
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob("*.partial"))
    made = json.loads((run_dir / "provenance.json").read_text())  # where the numbers came from
    assert list(made) == ["prepare", "embed", "collab", "quantize", "train", "evaluate"]
    for stage, record in made.items():
        assert record["seconds"] == json.loads((run_dir / stage / "stage.json").read_text())["seconds"] >= 0
        assert record["versions"]["torch"] == torch.__version__ and record["versions"]["genrec"]
        assert record["machine"]["cores"] >= 1 and record["processes"] == 1
    assert len(made["train"]["versions"]["genrec_commit"] or "") in (0, 40)
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    assert results["methods"] == ["generative", "exact"] and results["omitted"] == {}
    assert results["dtype"] == "float32" and results["beam_size"] == 20 and results["num_items"] == 64
    assert results["users"] == {"valid": 120, "test": 120}
    # the numbers, recomputed here: the exact ranking from teacher forcing item by item, the generative one by
    # looking the target up in a beam of evaluate.beam_size, both without the user's (truncated) history
    cfg = load_config(TINY, overrides)
    run = RunDir(run_dir)
    model = load_model(run.model)
    ws = load_workspace(cfg, run)
    trie = ws.catalog.trie
    for split, eval_set in (("valid", ws.split.valid), ("test", ws.split.test)):
        H = cfg.data.max_history
        history = torch.tensor([[-1] * (H - len(h[-H:])) + h[-H:].tolist() for h in eval_set.histories])
        batch = Batch(torch.from_numpy(ws.user_bucket[eval_set.users]), history, torch.from_numpy(eval_set.targets))
        scores = brute_force_scores(model, batch)
        for b, h in enumerate(history.tolist()):
            scores[b, [i for i in h if i >= 0]] = float("-inf")
        own = scores.gather(1, batch.targets[:, None])[:, 0]
        exact = (scores > own[:, None]).sum(1)
        kept = (brute_force_scores(model, batch) > own[:, None]).sum(1)  # the same scores, history kept
        for exclude, key in ((True, "metrics"), (False, "metrics_with_history")):
            items = beam_search(model.code_decoder(trie), batch, trie, beam_size=cfg.evaluate.beam_size,
                                exclude_history=exclude).items
            hit = items == batch.targets[:, None]
            generative = torch.where(hit.any(1), hit.float().argmax(1), 10**9)
            for method, ranks in (("exact", exact if exclude else kept), ("generative", generative)):
                for k in cfg.evaluate.ks:
                    inside = ranks < k
                    ndcg = torch.where(inside, 1 / torch.log2(ranks.double() + 2), 0.0).mean()
                    assert results[key][f"{split}/{method}/recall@{k}"] == pytest.approx(
                        float(inside.double().mean()), abs=1e-9), (split, method, k, key)
                    assert results[key][f"{split}/{method}/ndcg@{k}"] == pytest.approx(float(ndcg), abs=1e-9)
    # keeping history items in the ranking can only push targets down (no target repeats a history item here)
    for key, value in results["metrics"].items():
        assert results["metrics_with_history"][key] <= value + 1e-12, key
    assert results["metrics_with_history"]["test/exact/recall@5"] < results["metrics"]["test/exact/recall@5"]
    # the synthetic data is learnable: far above chance (10 of 64 items = 0.16)
    assert results["metrics"]["test/exact/recall@10"] > 0.35
    # asking again prints the table of results.json without rerunning anything
    capsys.readouterr()
    assert main(["evaluate", "-c", str(TINY), *overrides]) == 0
    assert_table_is_results(capsys.readouterr().out, results)


def test_rankings_file_recomputes_the_metrics(finished_run):
    """evaluate.rankings_k writes every user's top list per split, method and protocol with external IDs; the
    metrics recomputed from that file with pandas alone are the evaluator's."""
    import pandas as pd

    run_dir, overrides = finished_run
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    rankings = pd.read_json(run_dir / "evaluate" / "rankings.jsonl", lines=True, dtype={"user": str, "target": str})
    dataset = load_prepared(run_dir / "prepare")
    assert set(rankings["user"]) <= set(dataset.user_ids) and set(rankings["target"]) <= set(dataset.item_ids)
    groups = rankings.groupby(["split", "method", "exclude_history"])
    assert len(groups) == 2 * 2 * 2 and (groups.size() == 120).all()  # every user, once per list
    assert rankings["items"].map(len).eq(20).all()
    assert all(list(s) == sorted(s, reverse=True) for s in rankings["scores"])
    for (split, method, exclude), rows in groups:
        key = "metrics" if exclude else "metrics_with_history"
        ranks = [items.index(t) if t in items else 10**9 for items, t in zip(rows["items"], rows["target"])]
        for k in (5, 10, 20):
            recall = np.mean([r < k for r in ranks])
            ndcg = np.mean([1 / np.log2(r + 2) if r < k else 0.0 for r in ranks])
            assert results[key][f"{split}/{method}/recall@{k}"] == pytest.approx(recall, abs=1e-12)
            assert results[key][f"{split}/{method}/ndcg@{k}"] == pytest.approx(ndcg, abs=1e-12)
    sequence = dict(zip(dataset.user_ids, dataset.sequences))
    index = {item: i for i, item in enumerate(dataset.item_ids)}
    H = load_config(TINY, overrides).data.max_history
    with_history_items = {True: 0, False: 0}
    for split, user, items, exclude in zip(rankings["split"], rankings["user"], rankings["items"],
                                           rankings["exclude_history"]):
        history = sequence[user][: -2 if split == "valid" else -1][-H:].tolist()  # what the model was given
        with_history_items[exclude] += bool({index[i] for i in items} & set(history))
    assert with_history_items[True] == 0 and with_history_items[False] > 0


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
    before = after
    assert main(["run", "-c", str(TINY), *overrides, "evaluate.beam_size=10", "evaluate.ks=[5,10]",
                 "model.tiger.dropout=0.2"]) == 0  # the model's own section is the train stage's
    after = stamp_ids(copy)
    assert [after[s] == before[s] for s in before] == [True, True, True, True, False, False]
    before = stamp_ids(copy)
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
    run_dir, overrides = finished_run
    cfg = load_config(TINY, overrides)
    weights = load_model(run_dir / "collab" / "sasrec" / "best").item_embeddings().detach().numpy()  # [N, D]
    dataset = load_prepared(run_dir / "prepare")
    cold = item_counts(make_split(dataset, cfg.data).train, len(weights)) < cfg.collab.min_item_count
    text = np.load(run_dir / "embed" / "item_embeddings_l2norm.npy")
    raw = borrow_from_text_neighbours(weights, text, cold, cfg.collab.text_neighbours)
    np.testing.assert_allclose(np.load(run_dir / "collab" / "item_embeddings_raw.npy"), raw, atol=1e-6)
    centred = raw - raw.mean(0)
    expected = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(run_dir / "collab" / "item_embeddings_l2norm.npy"), expected, atol=1e-6)
    best = json.loads((run_dir / "collab" / "summary.json").read_text())
    log = [json.loads(line) for line in (run_dir / "collab" / "sasrec" / "log.jsonl").open()]
    validations = {r["step"]: r["valid/sasrec/ndcg@10"] for r in log if "valid/sasrec/ndcg@10" in r}
    assert best["cold_items"] == int(cold.sum())
    assert best["best_valid/sasrec/ndcg@10"] == max(validations.values())  # the selected step's score
    assert validations[best["best_step"]] == max(validations.values())
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


def test_the_collab_sasrec_is_tied_to_the_items_not_the_semantic_ids(finished_run):
    """The collab stage's SASRec runs before quantize: its checkpoint holds no semantic IDs, loads on its own,
    and accepts the run's catalogue with or without IDs; a different item list is refused."""
    run_dir, overrides = finished_run
    path = RunDir(run_dir).collab_model
    model = load_model(path)
    assert isinstance(model, SASRec) and not any("code" in name for name in model.state_dict())
    config = json.loads((path / "config.json").read_text())
    assert config["kind"] == "sasrec" and config["uses_sids"] is False
    cfg = load_config(TINY, overrides)
    ws = load_workspace(cfg, RunDir(run_dir))
    assert model.num_items == ws.catalog.num_items
    check_catalog(path, ws.catalog)
    check_catalog(path, Catalog(ws.catalog.item_ids, ws.catalog.items))  # as it was before quantize
    reordered = ws.catalog.item_ids[1:] + ws.catalog.item_ids[:1]
    with pytest.raises(GenrecError, match="trained on a different catalogue .* than the current items"):
        check_catalog(path, Catalog(reordered, ws.catalog.items))


def test_recommend_by_history_and_user(finished_run, capsys):
    run_dir, overrides = finished_run
    overrides = [*overrides, "evaluate.dtype=float32"]  # exact scores to compare with (the default may be bf16)
    items = [json.loads(line) for line in (run_dir / "prepare" / "items.jsonl").open()]
    ids = [item["item_id"] for item in items]
    assert main(["recommend", "-c", str(TINY), *overrides, "--history", ids[0], ids[1], "-k", "5", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in recs] == [1, 2, 3, 4, 5]
    assert not {r["item_id"] for r in recs} & {ids[0], ids[1]}  # history items excluded by default
    assert all(recs[i]["score"] >= recs[i + 1]["score"] for i in range(4))
    for r in recs:  # each item's own title, unescaped
        assert r["title"] == html.unescape(items[ids.index(r["item_id"])]["title"])
    # the scores are the items' log-probabilities under the model (an unknown user: token 0)
    model = load_model(run_dir / "train" / "best")
    scores = brute_force_scores(model, Batch(torch.zeros(1, dtype=torch.long), torch.tensor([[0, 1]])))[0]
    for r in recs:
        assert r["score"] == pytest.approx(float(scores[ids.index(r["item_id"])]), abs=1e-4)
    # --include-history lets history items back in
    assert main(["recommend", "-c", str(TINY), *overrides, "--history", ids[0], ids[1], "-k", "64", "--json",
                 "--include-history"]) == 0
    assert {ids[0], ids[1]} <= {r["item_id"] for r in json.loads(capsys.readouterr().out)}
    # a known user: their whole sequence is the history, their hashed token is used; the table prints the same
    # recommendations as the Python API, rank, item, log p and title
    assert main(["recommend", "-c", str(TINY), *overrides, "--user", "U00003", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["rank", "item", "score", "title"]
    cfg = load_config(TINY, overrides)
    expected = Recommender.load(run_dir, dtype="float32").recommend_user("U00003", k=3)
    assert len(out) == 1 + len(expected) == 4
    for line, r in zip(out[1:], expected):
        rank, item, score, title = line.split(maxsplit=3)
        assert (int(rank), item, title) == (r.rank, r.item_id, r.title)
        assert float(score) == pytest.approx(r.score, abs=5e-4)  # printed to 3 places
    dataset = load_prepared(run_dir / "prepare")
    user = dataset.user_ids.index("U00003")
    history = torch.from_numpy(dataset.sequences[user][None])
    bucket = int(user_buckets(["U00003"], cfg.model.tiger.num_user_buckets)[0])
    assert bucket > 0
    items_, _ = model.ranking("generative").recommend(Batch(torch.tensor([bucket]), history), 3, True)
    assert [ids[i] for i in items_[0].tolist()] == [r.item_id for r in expected]


@pytest.mark.parametrize("args, message", [
    (["--history", "NOPE1", "NOPE2"], "unknown item IDs in history 0: NOPE1, NOPE2"),
    (["--user", "nobody"], "user 'nobody' is not in"),
    (["--history", "S00000", "-k", "0"], "k must be between 1 and the catalogue's 64 items, got 0"),
    (["--history", "S00000", "-k", "500"], "k must be between 1 and the catalogue's 64 items, got 500"),
])
def test_recommend_bad_input(finished_run, capsys, args, message):
    _, overrides = finished_run
    assert main(["recommend", "-c", str(TINY), *overrides, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_evaluating_a_method_the_model_does_not_offer_is_refused(finished_run, tmp_path, capsys):
    run_dir, overrides = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    overrides = [o for o in overrides if not o.startswith("run_dir=")] + [f"run_dir={copy}"]
    assert main(["evaluate", "-c", str(TINY), *overrides, "evaluate.methods=[exact,sasrec]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == ("genrec: error: evaluate.methods names sasrec, which model.kind=tiger does not "
                                    "offer; choose from generative, exact")
    assert "Traceback" not in err
    assert not (copy / "evaluate.tmp").exists()
    assert (copy / "evaluate" / "results.json").read_bytes() == (run_dir / "evaluate" / "results.json").read_bytes()


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
    """The README's command shape, as a user types it (installed console script, fresh process); what it prints
    is the results file: every number, and why a cut-off beyond the beam is not reported."""
    genrec = shutil.which("genrec") or str(REPO / ".venv" / "bin" / "genrec")
    out = subprocess.run([genrec, "run", "-c", str(TINY), f"run_dir={tmp_path / 'run'}", f"data.path={tiny_data}",
                          "train.max_steps=10", "train.eval_every=10", "train.warmup_steps=2", "collab.max_steps=20",
                          "collab.eval_every=10", "evaluate.ks=[5,10,40]"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "evaluate" / "results.json").read_text())
    assert results["cold_users"] == {"valid": 0, "test": 0}  # every target is a training item: no cold slice
    assert sorted(results["omitted"]) == sorted(f"{split}/generative{part}/{m}@40" for split in ("test", "valid")
                                                for part in ("", "/in") for m in ("ndcg", "recall"))  # beam of 20
    assert "test/exact/recall@40" in results["metrics"]
    assert_table_is_results(out.stdout, results)


def test_rqvae_semantic_ids_with_the_collaborative_term_run_end_to_end(tiny_overrides, capsys):
    """quantize.method=rqvae on the text embeddings, pulled toward the collab stage's, through training and
    evaluation; the IDs are unique and written as tokens."""
    overrides = [*tiny_overrides, "quantize.method=rqvae", "quantize.inputs=text", "quantize.collab_weight=0.5",
                 "quantize.steps=100", "quantize.batch_size=32", "quantize.codebook_size=8", "quantize.latent_dim=8",
                 "quantize.hidden_dim=32", "collab.max_steps=20", "collab.eval_every=10", "train.max_steps=20",
                 "train.eval_every=20"]
    assert main(["run", "-c", str(TINY), *overrides]) == 0
    run_dir = Path(overrides[0].split("=", 1)[1])
    summary = json.loads((run_dir / "quantize" / "summary.json").read_text())
    assert summary["config"]["method"] == "rqvae" and summary["embeddings"] == "embed/item_embeddings_l2norm.npy"
    assert summary["history"][-1]["step"] == 100
    tokens = json.loads((run_dir / "quantize" / "semantic_ids.json").read_text())
    assert len(set(tokens.values())) == len(tokens) == 64
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    assert "test/generative/recall@10" in results["metrics"]
    capsys.readouterr()
    # a collaborative term without the collab stage is refused before anything runs
    assert main(["run", "-c", str(TINY), *overrides, "collab.enabled=false", "train.distill=0"]) == 2
    assert "quantize.collab_weight is the RQ-VAE's collaborative term" in capsys.readouterr().err


def test_settings_added_later_keep_older_run_directories_current():
    """Fingerprints of the default recipe's stages, as a run made before the later settings (repeats, new items,
    RQ-VAE, the dense head, the optimiser's beta2 and target weights, SASRec's attention dropout) stamped them:
    such a run stays current."""
    from genrec.config import fingerprint
    from genrec.pipeline import LATER, _without_later_defaults, settings

    before_hybrid = ["model.tiger.text_input=false", "model.tiger.dense_weight=0"]  # the default recipe then
    cfg = load_config(REPO / "configs" / "beauty.yaml", before_hybrid)
    got = {st: fingerprint(*map(_without_later_defaults, settings(cfg, st).items()))
           for st in ("prepare", "embed", "collab", "quantize", "train", "evaluate")}
    assert got == {"prepare": "69f4e85aaba86b02", "embed": "312a44d21bd0ffad", "collab": "517b7dcb648f1057",
                   "quantize": "6f5998a5cbf40152", "train": "22c3f543944ec373", "evaluate": "e9ffa7ad03639fca"}
    changed = load_config(REPO / "configs" / "beauty.yaml", ["data.cold_items=0.05"])  # and the hybrid
    assert fingerprint(*map(_without_later_defaults, settings(changed, "prepare").items())) != got["prepare"]
    assert fingerprint(*map(_without_later_defaults, settings(changed, "train").items())) != got["train"]
    sasrec = load_config(REPO / "configs" / "beauty.yaml", [*before_hybrid, "model.sasrec.attention_dropout=0"])
    assert fingerprint(*map(_without_later_defaults, settings(sasrec, "collab").items())) != got["collab"]
    assert set(LATER) <= {"data", "quantize", "model.tiger", "model.sasrec", "train"}
