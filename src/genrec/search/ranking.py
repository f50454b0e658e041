"""Conventions every ranking method shares: the rank of a target that is not returned, removing the user's
history from a ranking, and a target's rank among complete scores."""

from __future__ import annotations

import torch
from torch import Tensor

MISS = 2**62  # the rank of a target that is not in the returned list: beyond every k


def in_history(items: Tensor, history: Tensor) -> Tensor:
    """items [B, X], history [B, T] (-1 padded) -> [B, X] bool: the item is in that user's history."""
    hits = torch.zeros_like(items, dtype=torch.bool)
    for j in range(history.shape[1]):  # T <= max_history steps, each a [B, X] comparison
        hits |= items == history[:, j : j + 1]
    return hits & (items >= 0)


def drop_items(scores: Tensor, items: Tensor) -> Tensor:
    """scores [B, N] over the catalogue with the listed items [B, m] (-1: none) set to -inf, in place."""
    rows, cols = (items >= 0).nonzero(as_tuple=True)
    scores[rows, items[rows, cols]] = float("-inf")
    return scores


def ranks_in_scores(scores: Tensor, targets: Tensor, k: int | None = None) -> Tensor:
    """scores [B, N] over the whole catalogue -> 0-based rank of each target [B]: the items scoring higher, and
    those tied with it that come before it in item order (ties broken by item index, as a sorted list would
    break them; counting only the items strictly higher would hand the target every tie, which flatters a method
    whose scores tie often, such as any scored in bf16). MISS for a target scored -inf (removed from the ranking)
    or, with k, ranked k or lower."""
    own = scores.gather(1, targets[:, None])
    before = torch.arange(scores.shape[1], device=scores.device)[None] < targets[:, None]  # [B, N]
    ranks = (scores > own).sum(1) + ((scores == own) & before).sum(1)
    out = torch.isfinite(own[:, 0]) if k is None else (ranks < k) & torch.isfinite(own[:, 0])
    return torch.where(out, ranks, torch.full_like(ranks, MISS))
