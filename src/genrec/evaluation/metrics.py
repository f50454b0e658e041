"""Recall@k and NDCG@k for one held-out item per user, computed on item IDs.

With a single relevant item at 0-based rank r: Recall@k = 1 if r < k else 0, NDCG@k = 1 / log2(r + 2) if
r < k else 0 (the ideal DCG is 1). Per-user values are summed so that shards can be all-reduced, then divided
by the number of users.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genrec.search.ranking import MISS


def ranks_in_list(items: Tensor, targets: Tensor) -> Tensor:
    """items [B, n] ranked item ids (-1 = empty slot), targets [B] -> 0-based rank [B]; MISS if absent."""
    hit = items == targets[:, None]
    return torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(targets, MISS))


def metric_sums(ranks: Tensor, ks: tuple[int, ...]) -> Tensor:
    """ranks [B] -> [2, len(ks)]: summed recall (row 0) and NDCG (row 1) at each k."""
    ranks = ranks.double()[:, None]
    k = torch.tensor(ks, dtype=torch.double)[None, :]
    inside = ranks < k
    recall = inside.double().sum(0)
    ndcg = torch.where(inside, 1.0 / torch.log2(ranks + 2.0), torch.zeros(())).sum(0)
    return torch.stack([recall, ndcg])
