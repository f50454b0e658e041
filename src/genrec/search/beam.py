"""Constrained beam search over the catalogue trie, and the rank of a target in the list it returns.

Both run as tensor operations over a whole batch of users and beams: no Python loop over users, beams or
candidates, only over the C levels. Scores are summed log-probabilities, so an item's score is
log p(item | history) under the model. Only children of live trie nodes are candidates, so every returned
item is a real catalogue item; there is no unconstrained fallback. The model is reached only through the
`CodeDecoder` protocol below.

Shapes: B users, W beams, M max children of a node at the current depth, C levels, N items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from genrec.data.batches import Batch
from genrec.ids.trie import Trie
from genrec.search.ranking import MISS, in_history

NEG_INF = float("-inf")


class CodeDecoder(Protocol):
    """A generative model as trie-constrained search sees it: a state for B users x W beams (trie nodes), and
    the log-probabilities of the children of those nodes. Each call returns the state to use from then on (the old
one stays valid for the beams it had; a decoder may fill caches inside it).

    Shapes: B users, W beams, M children slots of a node at depth d, d codes so far."""

    exact_by_beam: bool  # exact scoring is cheapest as a beam as wide as the catalogue (only-children free)

    def start(self, batch: Batch) -> Any:
        """The state of one beam per user at the root."""

    def child_log_probs(self, state: Any, depth: int, nodes: Tensor, prefix: Tensor, code: Tensor, valid: Tensor,
                        live: Tensor) -> tuple[Tensor, Any]:
        """log p(child | prefix) [B, W, M] for depth-`depth` nodes [B, W] reached by codes `prefix` [B, W, d];
        `code` [B, W, M] the children's codes, `valid` [B, W, M] the real ones, `live` [B, W] the beams in use.
        Invalid slots are -inf."""

    def select(self, state: Any, parent: Tensor) -> Any:
        """The state of new beams [B, W'], each continuing beam `parent` [B, W'] of the old state."""

    def keep_users(self, state: Any, keep: Tensor) -> Any:
        """The state of the users where keep [B] is true."""

    def target_log_probs(self, state: Any, targets: Tensor) -> Tensor:
        """Teacher-forced log p(target | history) [B] from a `start` state, summed as search sums it."""


@dataclass
class BeamResult:
    items: Tensor  # [B, W] item indices, best first; -1 where fewer than W items could be returned
    scores: Tensor  # [B, W] summed log-probabilities; -inf where items is -1


@dataclass
class Beams:
    """The live search: decoder state, each beam's trie node [B, W], score [B, W] and codes so far [B, W, d]."""

    state: Any
    nodes: Tensor
    scores: Tensor
    prefix: Tensor


def _root(decoder: CodeDecoder, batch: Batch) -> Beams:
    B, device = batch.history.shape[0], batch.history.device
    return Beams(decoder.start(batch), torch.zeros(B, 1, dtype=torch.long, device=device),
                 torch.zeros(B, 1, device=device), torch.empty(B, 1, 0, dtype=torch.long, device=device))


def _step(decoder: CodeDecoder, trie: Trie, d: int, beams: Beams, beam_size: int, history: Tensor | None,
          prune: Callable[[Tensor, Tensor], Tensor] | None = None) -> tuple[Beams, Tensor]:
    """One level: expand every live beam's children, keep the best `beam_size` candidates. `history` [B, T]
    removes those items at the last level; `prune(cand, child)` may drop more candidates. Returns the new beams
    (their state and prefix advanced only below the last level) and each new beam's parent [B, W']."""
    child, valid = trie.children(d, beams.nodes)  # [B, W, M]
    code = trie.node_code[d][child]  # [B, W, M]
    live = torch.isfinite(beams.scores)
    valid = valid & live[..., None]
    logp, state = decoder.child_log_probs(beams.state, d, beams.nodes, beams.prefix, code, valid, live)
    cand = (beams.scores[..., None] + logp).masked_fill(~valid, NEG_INF)  # [B, W, M]
    if prune is not None:
        cand = prune(cand, child)
    if history is not None and d == trie.depth - 1:
        cand = cand.masked_fill(in_history(trie.leaf_item[child].flatten(1), history).view_as(cand), NEG_INF)
    M = child.shape[-1]
    width = max(1, min(beam_size, int(torch.isfinite(cand).flatten(1).sum(1).max())))
    scores, flat = cand.flatten(1).topk(width, dim=1)  # [B, W']
    parent = torch.div(flat, M, rounding_mode="floor")
    nodes = child.flatten(1).gather(1, flat)
    prefix = beams.prefix
    if d + 1 < trie.depth:
        chosen = code.flatten(1).gather(1, flat)  # [B, W']
        prefix = torch.cat([prefix.gather(1, parent[..., None].expand(-1, -1, d)), chosen[..., None]], dim=2)
        state = decoder.select(state, parent)
    return Beams(state, nodes, scores, prefix), parent


@torch.no_grad()
def beam_search(decoder: CodeDecoder, batch: Batch, trie: Trie, *, beam_size: int,
                exclude_history: bool = False) -> BeamResult:
    """Top-`beam_size` items per user by constrained beam search, sorted by score (best first)."""
    beams = _root(decoder, batch)
    history = batch.history if exclude_history else None
    for d in range(trie.depth):
        beams, _ = _step(decoder, trie, d, beams, beam_size, history)
    scores = beams.scores
    alive = torch.isfinite(scores)
    items = torch.where(alive, trie.leaf_item[beams.nodes], -1)
    if items.shape[1] < beam_size:  # catalogue (or its live part) smaller than the beam
        B, pad = items.shape[0], beam_size - items.shape[1]
        items = torch.cat([items, items.new_full((B, pad), -1)], dim=1)
        scores = torch.cat([scores, scores.new_full((B, pad), NEG_INF)], dim=1)
    return BeamResult(items, scores)


@torch.no_grad()
def beam_ranks(decoder: CodeDecoder, batch: Batch, trie: Trie, *, beam_size: int,
               exclude_history: bool = False) -> Tensor:
    """The 0-based rank of each target among the items `beam_search` returns with this beam, MISS if it is
    not returned: [B]. Same answer as searching and looking the target up, for less work, because only beams
    that could end above the target matter to its rank:

    - a user whose target prefix falls out of the beam at some level is finished (its target cannot come out);
    - candidates scoring below the target's own (teacher-forced) score are dropped: they rank below every
      candidate that can still beat the target, so dropping them changes neither which of those survive each
      level nor the target's final position. A margin of 1e-3 (1 + |score|) guards against rounding
      differences between the two ways of summing, and the target's own prefix is never dropped.
    """
    targets = batch.targets
    assert targets is not None and targets.ndim == 1
    B, C, device = targets.shape[0], trie.depth, targets.device
    ranks = torch.full((B,), MISS, dtype=torch.long, device=device)
    beams = _root(decoder, batch)
    floor = decoder.target_log_probs(beams.state, targets)
    floor = floor - 1e-3 * (1 + floor.abs())  # [B]
    path = torch.cat([trie.paths(targets), trie.item_leaf[targets][:, None]], dim=1)  # [B, C + 1] nodes
    history = batch.history
    user = torch.arange(B, device=device)  # original index of each remaining user

    def keep_users(keep: Tensor) -> None:
        nonlocal beams, floor, path, history, user
        beams = Beams(decoder.keep_users(beams.state, keep), beams.nodes[keep], beams.scores[keep],
                      beams.prefix[keep])
        floor, path, history, user = floor[keep], path[keep], history[keep], user[keep]

    if exclude_history:  # a target already in the history is excluded from the ranking: a miss
        keep_users(~in_history(targets[:, None], history)[:, 0])
    for d in range(C):
        if user.numel() == 0:
            break

        def prune(cand: Tensor, child: Tensor) -> Tensor:
            own = child == path[:, d + 1, None, None]  # the target's prefix one level down
            return cand.masked_fill((cand < floor[:, None, None]) & ~own, NEG_INF)

        beams, _ = _step(decoder, trie, d, beams, beam_size, history if exclude_history else None, prune)
        found = (beams.nodes == path[:, d + 1, None]) & torch.isfinite(beams.scores)  # [n, W']
        if d == C - 1:
            hit = found.any(1)
            ranks[user[hit]] = found[hit].float().argmax(1)
            break
        keep = found.any(1)  # users whose target can still come out
        if not bool(keep.all()):
            keep_users(keep)
    return ranks
