"""Natural-language queries on Amazon Beauty: the query model against plain text retrieval, and personalised
search against its parts, on held-out queries (a template no training query uses; `genrec.query.data`).

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000 \
        python bench/query.py [--run runs/beauty] [overrides ...] [--threads N] [--retrain] [--out bench/results/query.json]

The run must have its stages done (`genrec run`); its query model is trained (`genrec train-query`) when missing
or with --retrain. Methods on the test items' held-out queries:
- generative: the query model's trie-constrained beam search (beam query.beam_size);
- generative+dense: its top query.candidates re-ranked by the dense cosine (two passes);
- dense: the sentence encoder's query vector against the item embeddings of the embed stage (exact, full catalogue);
- bm25: BM25 (bm25s) over each item's title and category path.
On test users, each with a held-out-template query made from their test item: the query-only methods, the
recommender alone (history only), and personalised (query model + recommender, weight chosen on validation
users). Metrics: hit@1, hit@10, ndcg@10, category_precision@10, invalid_rate, queries_per_s (one batch of all
queries per method, encoding included, `--threads` torch threads).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from meta import machine, versions

from genrec.config import load_config
from genrec.query.data import category_path, make_queries, title_of
from genrec.query.metrics import query_metrics
from genrec.query.personal import combine, user_queries
from genrec.query.run import personal_scores, train_query
from genrec.query.searcher import Searcher
from genrec.rundir import RunDir
from genrec.serve.recommender import Recommender
from genrec.workspace import load_workspace


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def dense_rank(searcher: Searcher, text: torch.Tensor, queries: list[str], k: int) -> list[list[int]]:
    q = searcher.answerer.encoder.pooled(queries)
    return (q @ text.T).topk(k, dim=1).indices.tolist()


def rerank_dense(searcher: Searcher, text: torch.Tensor, queries: list[str], rows: list[list[int]], k: int
                 ) -> list[list[int]]:
    q = searcher.answerer.encoder.pooled(queries)
    out = []
    for i, r in enumerate(rows):
        keep = [x for x in r if x >= 0]
        cos = (text[keep] @ q[i]).tolist()
        out.append([keep[j] for j in np.argsort(-np.asarray(cos), kind="stable")[:k]])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/beauty", help="a run directory with every stage done")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the run's recipe (query.* settings)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="train the query model even if the run has one")
    p.add_argument("--out", default="bench/results/query.json")
    args = p.parse_args()
    command = " ".join([os.path.basename(sys.executable), *sys.argv])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    run = RunDir(args.run)
    cfg = load_config(run.config, [f"run_dir={run.root}", *args.overrides])
    train_s = None
    if args.retrain or not (run.query / "config.json").is_file():
        _, train_s = timed(lambda: train_query(cfg))
    summary = json.loads((run.query / "summary.json").read_text())
    ws = load_workspace(cfg, run)
    catalog, q = ws.catalog, cfg.query
    searcher, rec = Searcher.load(run.root), Recommender.load(run.root)
    text = torch.from_numpy(catalog.text)
    data = make_queries(catalog.items, seed=q.seed, held_out=q.held_out, windows=q.train_windows)
    queries, targets = [e.query for e in data.test], [e.item for e in data.test]
    metrics: dict[str, float] = {}
    valid_dense = query_metrics(dense_rank(searcher, text, [e.query for e in data.valid], 10),
                                [e.item for e in data.valid], catalog.items)  # what the model is chosen against

    def record(name: str, ranked: list[list[int]], seconds: float, tgt: list[int]) -> None:
        for key, value in query_metrics(ranked, tgt, catalog.items).items():
            metrics[f"{name}/{key}"] = round(value, 4)
        metrics[f"{name}/queries_per_s"] = round(len(tgt) / seconds, 1)
        print(f"{name:<24}" + "  ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in metrics.items()
                                        if k.startswith(name + "/")), flush=True)

    (rows, _), s = timed(lambda: searcher.answer(queries, 10, q.beam_size))
    record("generative", rows, s, targets)
    (wide, _), s = timed(lambda: searcher.answer(queries, q.candidates, q.candidates))
    ranked, s2 = timed(lambda: rerank_dense(searcher, text, queries, wide, 10))
    record("generative+dense", ranked, s + s2, targets)
    ranked, s = timed(lambda: dense_rank(searcher, text, queries, 10))
    record("dense", ranked, s, targets)
    import bm25s

    corpus = [f"{title_of(f)} {' '.join(category_path(f))}" for f in catalog.items]
    bm = bm25s.BM25()
    bm.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)

    def bm25(qs: list[str]) -> list[list[int]]:
        res = bm.retrieve(bm25s.tokenize(qs, stopwords="en", show_progress=False), k=10, show_progress=False)
        return (res.documents if hasattr(res, "documents") else res[0]).tolist()

    ranked, s = timed(lambda: bm25(queries))
    record("bm25", ranked, s, targets)

    test = ws.split.test
    users = user_queries(catalog.items, test.users, test.histories, test.targets, seed=q.seed + 1, limit=q.held_out)
    (rows, _), s = timed(lambda: searcher.answer(users.queries, 10, q.beam_size))
    record("users/generative", rows, s, users.targets)
    ranked, s = timed(lambda: dense_rank(searcher, text, users.queries, 10))
    record("users/dense", ranked, s, users.targets)
    ranked, s = timed(lambda: bm25(users.queries))
    record("users/bm25", ranked, s, users.targets)
    recs, s = timed(lambda: rec.rank(users.histories, [0] * len(users.histories), 10, False, None))
    record("users/recommender", [[searcher.index[x.item_id] for x in r] for r in recs], s, users.targets)
    scores, s = timed(lambda: personal_scores(searcher, rec, users.queries, users.histories, q.candidates))
    weight = summary.get("history_weight", 0.0) if q.history_weight < 0 else q.history_weight
    ranked, s2 = timed(lambda: combine(*scores, weight, 10))
    record("personalised", ranked, s + s2, users.targets)

    out = {"command": command, "machine": machine(), "versions": versions(), "run": str(run.root),
           "query": {k: v for k, v in vars(q).items()}, "test_queries": len(queries), "test_users": len(users.users),
           "train_queries": summary["train_queries"], "best_epoch": summary["best_epoch"],
           "history_weight": weight, "train_seconds": round(train_s, 1) if train_s else summary.get("seconds"),
           "valid": summary["valid"], "valid_dense": valid_dense, "metrics": metrics}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
