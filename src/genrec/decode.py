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

from genrec.tiger import Batch, Tiger
from genrec.trie import Trie

NEG_INF = float("-inf")


@dataclass
class BeamResult:
    items: Tensor  # [B, W] item indices, best first; -1 where fewer than W items could be returned
    scores: Tensor  # [B, W] summed log-probabilities; -inf where items is -1


def _reorder(cache: list[tuple[Tensor, Tensor]], parent: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Gather each user's self-attention cache [B*W, H, t, E] by parent beam index [B, W'] -> [B*W', H, t, E]."""
    B, W2 = parent.shape
    out = []
    for k, v in cache:
        k, v = k.view(B, -1, *k.shape[1:]), v.view(B, -1, *v.shape[1:])
        idx = parent.view(B, W2, 1, 1, 1).expand(-1, -1, *k.shape[2:])
        out.append((k.gather(1, idx).flatten(0, 1), v.gather(1, idx).flatten(0, 1)))
    return out


def _history_hits(items: Tensor, history: Tensor) -> Tensor:
    """items [B, X], history [B, T] (-1 padded) -> [B, X] bool: item is in that user's history."""
    hits = torch.zeros_like(items, dtype=torch.bool)
    for j in range(history.shape[1]):  # T <= max_history steps, each a [B, X] comparison
        hits |= items == history[:, j : j + 1]
    return hits & (items >= 0)


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
    x = model.bos(B, 1)  # [B, W, 1, D] the newest decoder input of each beam
    prefix = torch.empty(B, 1, 0, dtype=torch.long, device=device)  # [B, W, d] codes so far (uncached path)
    cache = None
    for d in range(trie.depth):
        if use_kv_cache:
            hidden, cache = model.decode(x, memory, cache)
        else:
            full = torch.cat([model.bos(B, prefix.shape[1]), model.embed_codes(prefix, 0)], dim=2)
            hidden, _ = model.decode(full, memory)
        logp = model.log_probs(hidden[:, :, -1], d)  # [B, W, K_d]
        child, valid = trie.children(d, nodes)  # [B, W, M]
        code = trie.node_code[d][child]  # [B, W, M]
        cand = scores[..., None] + logp.gather(-1, code)  # [B, W, M]
        cand = cand.masked_fill(~valid | ~torch.isfinite(scores)[..., None], NEG_INF)
        if exclude_history and d == trie.depth - 1:
            cand = cand.masked_fill(_history_hits(trie.leaf_item[child].flatten(1), batch.history).view_as(cand),
                                    NEG_INF)
        M = child.shape[-1]
        width = min(beam_size, cand.shape[1] * M)
        scores, flat = cand.flatten(1).topk(width, dim=1)  # [B, W']
        parent = torch.div(flat, M, rounding_mode="floor")
        nodes = child.flatten(1).gather(1, flat)
        chosen = code.flatten(1).gather(1, flat)  # [B, W']
        if d + 1 < trie.depth:
            if use_kv_cache:
                cache = _reorder(cache, parent)
                x = model.embed_codes(chosen[..., None], d)
            else:
                idx = parent[..., None].expand(-1, -1, prefix.shape[2])
                prefix = torch.cat([prefix.gather(1, idx), chosen[..., None]], dim=2)
    items = trie.leaf_item[nodes]
    alive = torch.isfinite(scores)
    items = torch.where(alive, items, -1)
    if items.shape[1] < beam_size:  # catalogue (or its live part) smaller than the beam
        pad = beam_size - items.shape[1]
        items = torch.cat([items, items.new_full((B, pad), -1)], dim=1)
        scores = torch.cat([scores, scores.new_full((B, pad), NEG_INF)], dim=1)
    return BeamResult(items, scores)


@torch.no_grad()
def score_catalog(model: Tiger, batch: Batch, trie: Trie, *, node_chunk: int = 2048) -> Tensor:
    """Exact log p(item | history) for every catalogue item: [B, N] in item-index order.

    Walks the trie depth first in chunks of at most `node_chunk` nodes: every trie node is decoded once per
    user, its KV cache gathered from its parent's, so items sharing a prefix share that prefix's work; only
    one chunk per depth is alive at a time, which bounds memory by depth x node_chunk decoder rows.
    """
    memory = model.encode(batch)
    B = batch.history.shape[0]
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
