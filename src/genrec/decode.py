"""Constrained decoding over the catalogue trie: batched beam search and exact catalogue scoring.

Both run as tensor operations over a whole batch of users and beams: no Python loop over users, beams or
candidates, only over the C levels. Scores are summed log-probabilities (level l's log-softmax over its
codes), so an item's score is log p(item | history) under the model. Only children of live trie nodes are
candidates, so every returned item is a real catalogue item; there is no unconstrained fallback.

Shapes: B users, W beams, M max children of a node at the current depth, C levels, N items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from genrec.metrics import MISS
from genrec.tiger import Batch, Memory, Tiger
from genrec.trie import Trie

NEG_INF = float("-inf")


@dataclass
class BeamResult:
    items: Tensor  # [B, W] item indices, best first; -1 where fewer than W items could be returned
    scores: Tensor  # [B, W] summed log-probabilities; -inf where items is -1


def _reorder(cache: list[tuple[Tensor, Tensor]], parent: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Gather each user's self-attention cache [B*W, H, t, E] by parent beam index [B, W'] -> [B*W', H, t, E]."""
    B = parent.shape[0]
    W = cache[0][0].shape[0] // B
    return _take_rows(cache, (parent + W * torch.arange(B, device=parent.device)[:, None]).flatten())


def _take_rows(cache: list[tuple[Tensor, Tensor]], rows: Tensor) -> list[tuple[Tensor, Tensor]]:
    return [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache]


def _history_hits(items: Tensor, history: Tensor) -> Tensor:
    """items [B, X], history [B, T] (-1 padded) -> [B, X] bool: item is in that user's history."""
    hits = torch.zeros_like(items, dtype=torch.bool)
    for j in range(history.shape[1]):  # T <= max_history steps, each a [B, X] comparison
        hits |= items == history[:, j : j + 1]
    return hits & (items >= 0)


def _subset_log_probs(model: Tiger, d: int, code: Tensor, valid: Tensor, needs: Tensor, decode) -> Tensor:
    """log p(child) [B, W, M] where only the beams in `needs` [B, W] are decoded; every other valid child is an
    only child: log 1 = 0. `decode(sel, keep)` decodes beams sel [B, W'] (each user's needed beams first, in
    beam order, then padding) and returns the last hidden states of the kept ones (keep [B, W']), [n, D] in
    row-major order, which is the order of `needs.nonzero()`."""
    logp = torch.zeros(code.shape, device=code.device).masked_fill(~valid, NEG_INF)
    width = int(needs.sum(1).max())
    if width == 0:
        return logp
    sel = torch.sort(needs.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]  # [B, W']
    rows = needs.nonzero(as_tuple=True)  # (user, beam) of each needed beam
    logp[rows] = model.child_log_probs(decode(sel, needs.gather(1, sel)), d, code[rows], valid[rows])
    return logp


def _expand(model: Tiger, memory: Memory, trie: Trie, d: int, nodes: Tensor, prefix: Tensor, cache, cached: int,
            code: Tensor, valid: Tensor, live: Tensor) -> tuple[Tensor, list | None, int]:
    """log p(child | prefix) [B, W, M] for the depth-d `nodes` [B, W] reached by `prefix` [B, W, d], and the cache.

    A beam needs a decoder step if it is live and (with `trie_softmax`) its node has several children; an only
    child has probability 1. One decoder layer: the needed beams are decoded from their nodes' self-attention
    states, with no cache. Deeper decoders: `cache` holds every beam's self-attention keys/values for positions
    < `cached`; when most beams need a step all are decoded (and the cache grows to d + 1), otherwise only
    those, each feeding its positions cached..d against the shared cache."""
    needs = (valid.sum(-1) > 1 if model.cfg.trie_softmax else torch.ones_like(live)) & live
    if model.cacheless:
        return _subset_log_probs(model, d, code, valid, needs, lambda sel, keep: model.decode_states(
            model.node_states(trie, d, nodes.gather(1, sel)), memory, keep)), cache, cached
    if not model.cfg.trie_softmax or 2 * int(needs.sum()) > int(live.sum()):
        hidden, cache = model.decode(model.decoder_inputs(prefix, cached), memory, cache)
        return model.child_log_probs(hidden[:, :, -1], d, code, valid), cache, d + 1

    def decode(sel: Tensor, keep: Tensor) -> Tensor:
        x = model.decoder_inputs(prefix.gather(1, sel[..., None].expand(-1, -1, d)), cached)
        return model.decode(x, memory, None if cache is None else _reorder(cache, sel))[0][:, :, -1][keep]

    return _subset_log_probs(model, d, code, valid, needs, decode), cache, cached


@torch.no_grad()
def beam_search(
    model: Tiger, batch: Batch, trie: Trie, *, beam_size: int, exclude_history: bool = False,
    use_kv_cache: bool = True,
) -> BeamResult:
    """Top-`beam_size` items per user by constrained beam search, sorted by score (best first)."""
    memory = model.encode(batch)
    B = batch.history.shape[0]
    device = batch.history.device
    nodes = torch.zeros(B, 1, dtype=torch.long, device=device)  # [B, W] depth-d node ids (root)
    scores = torch.zeros(B, 1, device=device)  # [B, W]
    prefix = torch.empty(B, 1, 0, dtype=torch.long, device=device)  # [B, W, d] codes so far
    cache, cached = None, 0  # self-attention keys/values of every beam's positions < cached
    for d in range(trie.depth):
        child, valid = trie.children(d, nodes)  # [B, W, M]
        code = trie.node_code[d][child]  # [B, W, M]
        live = torch.isfinite(scores)
        valid = valid & live[..., None]
        if use_kv_cache:
            logp, cache, cached = _expand(model, memory, trie, d, nodes, prefix, cache, cached, code, valid, live)
        else:  # reference path: every beam's whole prefix decoded from scratch
            hidden, _ = model.decode(model.decoder_inputs(prefix, 0), memory)
            logp = model.child_log_probs(hidden[:, :, -1], d, code, valid)
        cand = (scores[..., None] + logp).masked_fill(~valid, NEG_INF)  # [B, W, M]
        if exclude_history and d == trie.depth - 1:
            cand = cand.masked_fill(_history_hits(trie.leaf_item[child].flatten(1), batch.history).view_as(cand),
                                    NEG_INF)
        M = child.shape[-1]
        width = max(1, min(beam_size, int(torch.isfinite(cand).flatten(1).sum(1).max())))
        scores, flat = cand.flatten(1).topk(width, dim=1)  # [B, W']
        parent = torch.div(flat, M, rounding_mode="floor")
        nodes = child.flatten(1).gather(1, flat)
        chosen = code.flatten(1).gather(1, flat)  # [B, W']
        if d + 1 < trie.depth:
            prefix = torch.cat([prefix.gather(1, parent[..., None].expand(-1, -1, d)), chosen[..., None]], dim=2)
            if cache is not None:
                cache = _reorder(cache, parent)
    items = trie.leaf_item[nodes]
    alive = torch.isfinite(scores)
    items = torch.where(alive, items, -1)
    if items.shape[1] < beam_size:  # catalogue (or its live part) smaller than the beam
        pad = beam_size - items.shape[1]
        items = torch.cat([items, items.new_full((B, pad), -1)], dim=1)
        scores = torch.cat([scores, scores.new_full((B, pad), NEG_INF)], dim=1)
    return BeamResult(items, scores)


def target_scores(model: Tiger, memory: Memory, targets: Tensor, trie: Trie) -> Tensor:
    """Teacher-forced log p(target | history) [B], summed over levels as beam search sums them."""
    codes = model.item_codes[targets]  # [B, C]
    path = trie.paths(targets)  # [B, C]
    hidden, _ = model.decode(model.decoder_inputs(codes[:, None, :-1]), memory)  # [B, 1, C, D]
    total = torch.zeros(targets.shape[0], device=targets.device)
    for d in range(trie.depth):
        child, valid = trie.children(d, path[:, d : d + 1])  # [B, 1, M]
        code = trie.node_code[d][child]
        logp = model.child_log_probs(hidden[:, :, d], d, code, valid)
        total += logp.masked_fill(~(valid & (code == codes[:, d, None, None])), 0.0).sum((1, 2))
    return total


def _keep_users(memory: Memory, keep: Tensor) -> Memory:
    absorbed = None if memory.absorbed is None else tuple(t[keep] for t in memory.absorbed)
    return Memory([k[keep] for k in memory.keys], [v[keep] for v in memory.values], memory.mask[keep],
                  memory.token_item, absorbed)


@torch.no_grad()
def beam_ranks(model: Tiger, batch: Batch, trie: Trie, *, beam_size: int, exclude_history: bool = False) -> Tensor:
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
    B, C = targets.shape[0], trie.depth
    device = targets.device
    ranks = torch.full((B,), MISS, dtype=torch.long, device=device)
    memory = model.encode(batch)
    floor = target_scores(model, memory, targets, trie)
    floor = floor - 1e-3 * (1 + floor.abs())  # [B]
    path = torch.cat([trie.paths(targets), trie.item_leaf[targets][:, None]], dim=1)  # [B, C + 1] nodes
    history = batch.history
    user = torch.arange(B, device=device)  # original index of each remaining user
    if exclude_history:  # a target already in the history is excluded from the ranking: a miss
        keep = ~_history_hits(targets[:, None], history)[:, 0]
        memory, floor, path, history, user = _keep_users(memory, keep), floor[keep], path[keep], history[keep], user[keep]
    n = user.shape[0]
    nodes = torch.zeros(n, 1, dtype=torch.long, device=device)
    scores = torch.zeros(n, 1, device=device)
    prefix = torch.empty(n, 1, 0, dtype=torch.long, device=device)
    cache, cached = None, 0
    for d in range(C):
        if user.numel() == 0:
            break
        child, valid = trie.children(d, nodes)  # [n, W, M]
        code = trie.node_code[d][child]
        live = torch.isfinite(scores)
        valid = valid & live[..., None]
        logp, cache, cached = _expand(model, memory, trie, d, nodes, prefix, cache, cached, code, valid, live)
        cand = (scores[..., None] + logp).masked_fill(~valid, NEG_INF)
        own = child == path[:, d + 1, None, None]  # the target's prefix one level down
        cand = cand.masked_fill((cand < floor[:, None, None]) & ~own, NEG_INF)
        if exclude_history and d == C - 1:
            cand = cand.masked_fill(_history_hits(trie.leaf_item[child].flatten(1), history).view_as(cand), NEG_INF)
        M = child.shape[-1]
        width = max(1, min(beam_size, int(torch.isfinite(cand).flatten(1).sum(1).max())))
        scores, flat = cand.flatten(1).topk(width, dim=1)
        nodes = child.flatten(1).gather(1, flat)
        found = (nodes == path[:, d + 1, None]) & torch.isfinite(scores)  # [n, W']
        if d == C - 1:
            hit = found.any(1)
            ranks[user[hit]] = found[hit].float().argmax(1)
            break
        parent = torch.div(flat, M, rounding_mode="floor")
        prefix = torch.cat([prefix.gather(1, parent[..., None].expand(-1, -1, d)),
                            code.flatten(1).gather(1, flat)[..., None]], dim=2)
        if cache is not None:
            cache = _reorder(cache, parent)
        keep = found.any(1)  # users whose target can still come out
        if not bool(keep.all()):
            memory, floor, path, history, user = (_keep_users(memory, keep), floor[keep], path[keep],
                                                  history[keep], user[keep])
            nodes, scores, prefix = nodes[keep], scores[keep], prefix[keep]
            if cache is not None:
                W = scores.shape[1]
                rows = torch.arange(keep.shape[0] * W, device=device).view(-1, W)[keep].flatten()
                cache = _take_rows(cache, rows)
    return ranks


@torch.no_grad()
def score_catalog(model: Tiger, batch: Batch, trie: Trie, *, node_chunk: int = 2048) -> Tensor:
    """Exact log p(item | history) for every catalogue item: [B, N] in item-index order.

    With `trie_softmax`, a beam search as wide as the catalogue (which keeps every node). Otherwise it walks
    the trie depth first in chunks of at most `node_chunk` nodes: every trie node is decoded once per
    user, its KV cache gathered from its parent's, so items sharing a prefix share that prefix's work; only
    one chunk per depth is alive at a time, which bounds memory by depth x node_chunk decoder rows.
    """
    B = batch.history.shape[0]
    if model.cfg.trie_softmax:  # nodes with one child cost nothing: a beam over every trie node is cheapest
        result = beam_search(model, batch, trie, beam_size=trie.num_items)
        out = torch.full((B, trie.num_items), NEG_INF, device=batch.history.device)
        return out.scatter_(1, result.items.clamp(min=0), torch.where(result.items >= 0, result.scores, NEG_INF))
    memory = model.encode(batch)
    leaf_scores = torch.empty(B, trie.num_items, device=batch.history.device)

    def visit(d: int, lo: int, x: Tensor, cache, node_scores: Tensor) -> None:
        """Decode depth-d nodes lo.. (inputs x [B, n, 1, D], summed scores [B, n]) and recurse into children."""
        hidden, new_cache = model.decode(x, memory, cache)
        logp = model.log_probs(hidden[:, :, -1], d)  # [B, n, K_d]
        c_lo, c_hi = int(trie.child_start[d][lo]), int(trie.child_start[d][lo + x.shape[1]])
        kids = torch.arange(c_lo, c_hi, device=logp.device)
        parent = trie.parent[d][kids] - lo  # [n_kids] index into this chunk
        code = trie.node_code[d][kids]
        scores = node_scores[:, parent] + logp[:, parent, code]  # [B, n_kids]
        if d + 1 == trie.depth:
            leaf_scores[:, c_lo:c_hi] = scores
            return
        for k in range(0, c_hi - c_lo, node_chunk):
            sel = slice(k, k + node_chunk)
            visit(d + 1, c_lo + k, model.embed_codes(code[sel].expand(B, -1)[..., None], d),
                  _reorder(new_cache, parent[sel].expand(B, -1)), scores[:, sel])

    visit(0, 0, model.bos(B, 1), None, torch.zeros(B, 1, device=leaf_scores.device))
    return leaf_scores[:, trie.item_leaf]  # leaves -> item order
