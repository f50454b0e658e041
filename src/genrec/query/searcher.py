"""`Searcher`: a run's query model loaded once, answering natural-language queries with catalogue items, alone
or personalised with a user's history and the run's recommender.

    from genrec.query.searcher import Searcher
    s = Searcher.load("runs/beauty")
    s.search("fragrance free moisturiser for dry skin", k=10)
    s.search("red nail polish", history=["B004756YJA"])   # re-ranked with the recommender (see personal.py)
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from genrec.errors import GenrecError
from genrec.ids.catalog import Catalog
from genrec.query.config import QueryConfig
from genrec.query.describe import PrefixIndex
from genrec.query.encoder import TextEncoder
from genrec.query.model import QueryModel
from genrec.query.personal import history_method, rerank
from genrec.rundir import RunDir

MAX_QUERY_CHARS = 500


@dataclass(frozen=True)
class SearchHit:
    rank: int
    item_id: str
    score: float  # log p(item | query), plus w * log p(item | history) when personalised
    title: str


def check_query(query: object) -> str:
    if not isinstance(query, str) or not query.strip():
        raise GenrecError("the query is empty; give some words, e.g. 'red nail polish'")
    if len(query) > MAX_QUERY_CHARS:
        raise GenrecError(f"the query has {len(query)} characters; at most {MAX_QUERY_CHARS} are accepted")
    return query.strip()


class DefaultAnswerer:
    """The default query model with its frozen sentence encoder."""

    def __init__(self, model: QueryModel, encoder: TextEncoder) -> None:
        self.model, self.encoder = model, encoder

    def answer(self, queries: list[str], k: int, beam_size: int | None = None
               ) -> tuple[list[list[int]], list[list[float]]]:
        from genrec.query.train import answer

        return answer(self.model, self.encoder, queries, k=k, beam_size=beam_size or self.model.cfg.beam_size)


class Searcher:
    def __init__(self, answerer, catalog: Catalog, *, cfg: QueryConfig, history_weight: float, source: str = ""
                 ) -> None:
        self.answerer, self.cfg, self.catalog = answerer, cfg, catalog
        self.titles = [html.unescape(str(f.get("title") or "")) for f in catalog.items]
        self.index = catalog.index()
        self.history_weight, self.source = history_weight, source
        self.prefixes = PrefixIndex(catalog.items, catalog.require_sids())

    @classmethod
    def load(cls, path: str | Path) -> Searcher:
        """From a run directory whose query model `genrec train-query` wrote (<run>/query)."""
        from genrec.config import load_config
        from genrec.query.train import load_query_model
        from genrec.workspace import load_workspace

        run = RunDir(path)
        if not run.config.is_file():
            raise GenrecError(f"{path} is not a run directory (no config.yaml); pass runs/<name>")
        cfg = load_config(run.config)
        catalog = load_workspace(cfg, run).catalog
        kind = json.loads((run.query / "config.json").read_text()).get("kind") \
            if (run.query / "config.json").is_file() else None
        if kind == "causal_lm":
            from genrec.query.causal_lm import CausalLMQuery, load_lm

            answerer = CausalLMQuery(*load_lm(str(run.query / "lm")), catalog, cfg.query)
        else:
            model, encoder_name = load_query_model(run.query, catalog)
            answerer = DefaultAnswerer(model, TextEncoder(encoder_name, max_tokens=model.cfg.max_tokens))
        summary = run.query / "summary.json"
        weight = json.loads(summary.read_text()).get("history_weight", 0.5) if summary.is_file() else 0.5
        if cfg.query.history_weight >= 0:
            weight = cfg.query.history_weight
        return cls(answerer, catalog, cfg=cfg.query, history_weight=weight, source=str(path))

    def answer(self, queries: list[str], k: int, beam_size: int | None = None
               ) -> tuple[list[list[int]], list[list[float]]]:
        """Top-k catalogue rows and log p(item | query) per query (-1 past the catalogue's end)."""
        return self.answerer.answer(queries, k, beam_size or self.cfg.beam_size)

    def search(self, query: str, k: int = 10, *, history: Sequence[str] | None = None, recommender=None,
               weight: float | None = None) -> list[SearchHit]:
        """Top-k items for a query; with a history (item IDs, oldest first) and a Recommender of the same
        catalogue, the query model's candidates re-ranked with the recommender (personalised search)."""
        query = check_query(query)
        if not 1 <= k <= self.catalog.num_items:
            raise GenrecError(f"k must be between 1 and the catalogue's {self.catalog.num_items} items, got {k}")
        if not history:
            rows, scores = self.answer([query], k)
            return self._hits(rows[0], scores[0])
        if recommender is None:
            raise GenrecError("personalised search needs the run's recommender; load it with Recommender.load")
        n = max(k, self.cfg.candidates)
        rows, scores = self.answer([query], n, n)
        hist = recommender.history_row(list(history))
        recs = recommender.rank([hist], [0], min(n, len(recommender.item_ids)), False,
                                history_method(recommender))[0]
        w = self.history_weight if weight is None else weight
        top, total = rerank(rows[0], scores[0], [self.index.get(r.item_id, -1) for r in recs],
                            [r.score for r in recs], w, k)
        return self._hits(top, total)

    def _hits(self, rows: list[int], scores: list[float]) -> list[SearchHit]:
        return [SearchHit(rank, self.catalog.item_ids[r], float(s), self.titles[r])
                for rank, (r, s) in enumerate(zip(rows, scores), start=1) if r >= 0]

    def describe(self, item_id: str) -> str | None:
        row = self.index.get(item_id)
        return None if row is None else self.prefixes.describe_item(row)
