"""`genrec train-query`: the query model of a run, trained on its items, written to <run>/query, with the weight
of personalised search chosen on validation users when the run has a trained recommender."""

from __future__ import annotations

import json
import logging
from genrec.config import Config
from genrec.errors import GenrecError
from genrec.query.data import make_queries
from genrec.query.metrics import query_metrics
from genrec.query.personal import WEIGHTS, combine, history_method, history_scores, user_queries
from genrec.rundir import RunDir

logger = logging.getLogger(__name__)


def train_query(cfg: Config) -> dict:
    from genrec.query.train import train_query_model
    from genrec.workspace import load_workspace

    run = RunDir(cfg.run_dir)
    if not run.stamp("quantize").is_file() or not run.stamp("embed").is_file():
        raise GenrecError(f"{run.root} has no semantic IDs or text embeddings yet; run 'genrec run' (or 'genrec "
                          f"quantize') first")
    ws = load_workspace(cfg, run)
    q = cfg.query
    data = make_queries(ws.catalog.items, seed=q.seed, held_out=q.held_out, windows=q.train_windows)
    out = run.query
    if q.lm:
        from genrec.query.causal_lm import train_causal_lm

        return train_causal_lm(q, ws.catalog, data=data, out_dir=out)
    summary = train_query_model(q, ws.catalog, encoder_name=cfg.embed.model, out_dir=out, data=data)
    if (run.model / "config.json").is_file():
        from genrec.query.searcher import Searcher
        from genrec.serve.recommender import Recommender

        searcher, rec = Searcher.load(run.root), Recommender.load(run.root)
        users = user_queries(ws.catalog.items, ws.split.valid.users, ws.split.valid.histories,
                             ws.split.valid.targets, seed=q.seed, limit=q.held_out)
        scores = personal_scores(searcher, rec, users.queries, users.histories, q.candidates)
        table = {w: query_metrics(combine(*scores, w, 10), users.targets, ws.catalog.items)["hit@10"] for w in WEIGHTS}
        summary["history_weight"] = max(table, key=lambda w: (table[w], -w))
        summary["personalised_valid_hit@10"] = {str(w): v for w, v in table.items()}
        logger.info("personalised search, validation hit@10 by history weight: %s; chosen %s",
                    {w: round(v, 4) for w, v in table.items()}, summary["history_weight"])
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def personal_scores(searcher, rec, queries: list[str], histories: list[list[int]], candidates: int
                    ) -> tuple[list[list[int]], list[list[float]], list[list[float]]]:
    """The query model's candidates, their log p(item | query) and the recommender's log p(item | history)."""
    rows, qs, hs = [], [], []
    for start in range(0, len(queries), 256):
        r, s = searcher.answer(queries[start:start + 256], candidates, candidates)
        recs = rec.rank(histories[start:start + 256], [0] * len(r), candidates, False, history_method(rec),
                        candidates)
        rec_rows = [[searcher.index.get(x.item_id, -1) for x in row] for row in recs]
        rows += r
        qs += s
        hs += history_scores(r, rec_rows, [[x.score for x in row] for row in recs])
    return rows, qs, hs

