"""Personalised search: a query and a user's history, ranked by the query model and a sequential recommender
together. The query model proposes `candidates` items with log p(item | query); the recommender scores them with
log p(item | history) from a beam as wide as the candidates (an item outside its beam gets the beam's lowest score
minus one: the recommender found it less likely than anything it returned); the ranking is

    log p(item | query) + w * log p(item | history)

with w chosen on validation users (their query made from their held-out validation item with the held-out
template) and reported on test users (query from the test item). w = 0 is the query model alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from genrec.query.data import held_out_query

WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass
class UserQueries:
    users: list[int]  # user index
    histories: list[list[int]]  # catalogue rows, oldest first
    targets: list[int]
    queries: list[str]


def user_queries(items: list[dict], users: np.ndarray, histories: list[np.ndarray], targets: np.ndarray, *,
                 seed: int, limit: int) -> UserQueries:
    """Up to `limit` users (seeded) of an evaluation split, each with a held-out-template query made from their
    target item (users whose target title has fewer than 3 content words are skipped)."""
    rng = random.Random(seed)
    order = list(range(len(targets)))
    rng.shuffle(order)
    out = UserQueries([], [], [], [])
    for i in order:
        if len(out.users) >= limit:
            break
        query = held_out_query(items[int(targets[i])], rng)
        if query is None or len(histories[i]) == 0:
            continue
        out.users.append(int(users[i]))
        out.histories.append([int(x) for x in histories[i]])
        out.targets.append(int(targets[i]))
        out.queries.append(query)
    return out


def history_method(rec) -> str | None:
    """The recommender's ranking that personalised search combines with the query model: beam search where the
    model has one (log p(item | history) over as many items as asked), else the model's default."""
    return "generative" if "generative" in rec.methods else None


def history_scores(candidates: list[list[int]], rec_items: list[list[int]], rec_scores: list[list[float]]
                   ) -> list[list[float]]:
    """The recommender's score of each candidate: its log-probability where its beam returned the item, else the
    beam's lowest score minus one."""
    out = []
    for cand, items, scores in zip(candidates, rec_items, rec_scores):
        known = dict(zip(items, scores))
        floor = (min(scores) if scores else 0.0) - 1.0
        out.append([known.get(i, floor) for i in cand])
    return out


def combine(candidates: list[list[int]], query_scores: list[list[float]], hist_scores: list[list[float]],
            weight: float, k: int) -> list[list[int]]:
    """Top-k candidates of each query under log p(item | query) + weight * log p(item | history)."""
    return [top_k(cand, q, h, weight, k)[0] for cand, q, h in zip(candidates, query_scores, hist_scores)]


def top_k(candidates: list[int], query_scores: list[float], hist_scores: list[float], weight: float, k: int
          ) -> tuple[list[int], list[float]]:
    """One query's top-k candidates (rows; -1 entries dropped) and their combined scores."""
    total = np.asarray(query_scores, dtype=np.float64) + weight * np.asarray(hist_scores, dtype=np.float64)
    keep = [j for j in np.argsort(-total, kind="stable") if candidates[j] >= 0][:k]
    return [candidates[j] for j in keep], [float(total[j]) for j in keep]


def rerank(candidates: list[int], query_scores: list[float], rec_rows: list[int], rec_scores: list[float],
           weight: float, k: int) -> tuple[list[int], list[float]]:
    """Personalised search for one query: its candidates (rows) with log p(item | query), and the recommender's
    beam (rows, log-probabilities) for the user -> the top-k rows and their combined scores."""
    hist = history_scores([candidates], [rec_rows], [rec_scores])[0]
    return top_k(candidates, query_scores, hist, weight, k)
