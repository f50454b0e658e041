"""Exact scoring of the whole catalogue: log p(item | history) for every item, a complete ranking."""

from __future__ import annotations

import torch
from torch import Tensor

from genrec.data.batches import Batch
from genrec.ids.trie import Trie
from genrec.search.beam import NEG_INF, CodeDecoder, beam_search


@torch.no_grad()
def score_catalog(decoder: CodeDecoder, batch: Batch, trie: Trie, *, node_chunk: int = 2048) -> Tensor:
    """Exact log p(item | history) for every catalogue item: [B, N] in item-index order.

    Where the decoder says so (`exact_by_beam`: nodes with a single child cost nothing), a beam search as wide
    as the catalogue, which keeps every node. Otherwise the trie is walked depth first in chunks of at most
    `node_chunk` nodes: every trie node is decoded once per user, its state continuing its parent's, so items
    sharing a prefix share that prefix's work; only one chunk per depth is alive at a time, which bounds
    memory by depth x node_chunk beams.
    """
    B, device = batch.history.shape[0], batch.history.device
    if decoder.exact_by_beam:
        result = beam_search(decoder, batch, trie, beam_size=trie.num_items)
        out = torch.full((B, trie.num_items), NEG_INF, device=device)
        return out.scatter_(1, result.items.clamp(min=0), torch.where(result.items >= 0, result.scores, NEG_INF))
    leaf_scores = torch.empty(B, trie.num_items, device=device)

    def visit(d: int, lo: int, state, node_scores: Tensor) -> None:
        """Expand depth-d nodes lo.. (their decoder state, summed scores [B, n]) and recurse into children."""
        n = node_scores.shape[1]
        nodes = torch.arange(lo, lo + n, device=device)  # [n]
        child, valid = trie.children(d, nodes)  # [n, M]
        code = trie.node_code[d][child]
        prefix = trie.prefix_codes(d, nodes)  # [n, d]
        expand = lambda t: t.expand(B, *t.shape)  # noqa: E731  the same nodes for every user
        logp, state = decoder.child_log_probs(state, d, expand(nodes), expand(prefix), expand(code), expand(valid),
                                              torch.ones(B, n, dtype=torch.bool, device=device))
        # children of consecutive nodes are consecutive: the valid slots in row-major order are c_lo..c_hi
        scores = (node_scores[..., None] + logp)[:, valid]  # [B, n_kids]
        c_lo = int(trie.child_start[d][lo])
        if d + 1 == trie.depth:
            leaf_scores[:, c_lo : c_lo + scores.shape[1]] = scores
            return
        parent = valid.nonzero()[:, 0]  # [n_kids] index into this chunk
        for k in range(0, scores.shape[1], node_chunk):
            sel = slice(k, k + node_chunk)
            visit(d + 1, c_lo + k, decoder.select(state, parent[sel].expand(B, -1)), scores[:, sel])

    visit(0, 0, decoder.start(batch), torch.zeros(B, 1, device=device))
    return leaf_scores[:, trie.item_leaf]  # leaves -> item order
