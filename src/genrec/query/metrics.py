"""Scores of a query method on held-out queries: hit@1, hit@10 and NDCG@10 of the exact item, category
precision@10 (the share of the top 10 that share the item's leaf category), and the share of answers that are no
catalogue item (generated IDs that name nothing; 0 by construction under the trie)."""

from __future__ import annotations

import math

from genrec.query.data import leaf_category


def query_metrics(ranked: list[list[int]], targets: list[int], items: list[dict], k: int = 10) -> dict[str, float]:
    """`ranked`: per query the answered catalogue rows, best first (-1: an answer that is no catalogue item)."""
    n = len(targets)
    if n == 0:
        raise ValueError("no queries to score")
    leaf = [leaf_category(f) for f in items]
    hit1 = hitk = ndcg = cat = invalid = answers = 0.0
    for row, target in zip(ranked, targets):
        top = row[:k]
        answers += len(top)
        invalid += sum(1 for i in top if not 0 <= i < len(items))
        if top and top[0] == target:
            hit1 += 1
        if target in top:
            hitk += 1
            ndcg += 1 / math.log2(top.index(target) + 2)
        cat += sum(1 for i in top if 0 <= i < len(items) and leaf[i] == leaf[target]) / k
    return {"hit@1": hit1 / n, f"hit@{k}": hitk / n, f"ndcg@{k}": ndcg / n, f"category_precision@{k}": cat / n,
            "invalid_rate": invalid / max(answers, 1)}
