"""Repeat bias: a learned logit offset for items the user has already consumed, by how long ago.

Whether users come back to an item is a property of the data: Amazon reviews almost never name an item twice,
a grocery or music log often does. A model that scores items by their likeness to the history ranks the items
just consumed high either way, since nothing is more like an item than itself. The repeat bias lets the model
learn the data's answer instead: one scalar per recency bucket (0: the most recent item, ..., max_history - 1),
zero at initialisation, trained by the model's own loss (targets that repeat a history item pull it up, every
other target pushes it down), added

- in SASRec to the logit of each history item;
- in TIGER to the logit of a trie node whose items are all in the history, inside the softmax over its parent's
  children: the level where a history item's path first parts from every unseen item's. Deeper down its
  siblings are history items too (or it is an only child), so the offset counts once per item.

Shapes: B users, P predictions per user (every position, or the last), T history positions, n rows (B x P, or
the live ones), W trie nodes per row, M child slots.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genrec.ids.trie import Trie


class RepeatBias(nn.Module):
    """One offset per recency bucket, in logits. Trained at LR_SCALE times the model's learning rate (the trainer
    reads `lr_scale` off the parameter): Adam moves a parameter by about its learning rate per step whatever the
    gradient's size, so at the models' rates (1e-3 to 2e-3, decayed) an offset could travel only about 5 in a
    run; on Beauty, where it heads for minus infinity (no item ever comes back), TIGER's offset for the last item
    stopped at -4.6, that limit, with the gradient still pushing. On data with repeats it settles where the
    gradients balance. Its gradient stays in logits, so gradient clipping sees it as it is."""

    LR_SCALE = 10.0

    def __init__(self, max_history: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_history))
        self.weight.lr_scale = self.LR_SCALE  # type: ignore[attr-defined]

    def forward(self, ago: Tensor) -> Tensor:
        """ago [...] (-1: not seen) -> the offset [...] (0 where not seen)."""
        return torch.where(ago >= 0, self.weight[ago.clamp(0, self.weight.numel() - 1)], 0.0)


def seen(history: Tensor, every_position: bool) -> Tensor:
    """history [B, T] (left-padded with -1) -> ago [B, P, T]: for the prediction after position w (every w, or
    only the last), how many items before it the item at position j was last seen (w - j), or -1 where position
    j is padding, after w, or not the item's latest occurrence up to w."""
    T = history.shape[1]
    pos = torch.arange(T, device=history.device)
    valid = history >= 0
    later = (history[:, :, None] == history[:, None, :]) & (pos[None, :] > pos[:, None])[None]  # [B, j, j']
    next_same = torch.where(later, pos, T).amin(2)  # [B, T] the item's next occurrence (T: none)
    w = pos[:, None] if every_position else pos[-1:, None]  # [P, 1]
    live = valid[:, None, :] & (pos[None, None, :] <= w[None]) & (next_same[:, None, :] > w[None])  # [B, P, T]
    return torch.where(live, w[None] - pos[None, None, :], -1)


def seen_rows(history: Tensor, live: Tensor | None) -> tuple[Tensor, Tensor]:
    """history [B, T] -> (items [n, T], ago [n, T]) of each prediction's row: after each position where live
    [B, T] is true (rows in `live`'s order), or after the last position (live None, one row per user)."""
    ago = seen(history, every_position=live is not None)  # [B, P, T]
    items = history[:, None].expand_as(ago)
    return (items[:, 0], ago[:, 0]) if live is None else (items[live], ago[live])


def item_nodes(trie: Trie, items: Tensor, depth: int) -> Tensor:
    """items [...] -> their depth-`depth` trie nodes (depth C: the leaves)."""
    node = trie.item_leaf[items]
    for d in range(trie.depth - 1, depth - 1, -1):
        node = trie.parent[d][node]
    return node


def history_nodes(trie: Trie, items: Tensor, ago: Tensor, bias: RepeatBias, depth: int) -> tuple[Tensor, Tensor]:
    """Rows of seen items [n, T] with their `ago` [n, T] (-1: not seen) -> (node [n, T], offset [n, T]): at the
    position of the most recent item under each depth-`depth` node whose items were all seen in that row, the
    node and that item's offset; -1 and 0 everywhere else."""
    live = ago >= 0
    node = torch.where(live, item_nodes(trie, items.clamp(min=0), depth), -1)  # [n, T]
    same = (node[:, :, None] == node[:, None, :]) & live[:, None, :]  # [n, T, T']
    count = same.sum(2)
    size = trie.first_leaf(depth)
    size = size[1:] - size[:-1]  # leaves under each node
    full = live & (count == size[node.clamp(min=0)])
    recent = torch.where(same, ago[:, None, :], ago.new_tensor(torch.iinfo(ago.dtype).max)).amin(2)
    full = full & (ago == recent)  # one entry per node (its most recent item), so its offset is counted once
    return torch.where(full, node, -1), torch.where(full, bias(recent), 0.0)


def child_offsets(trie: Trie, depth: int, nodes: Tensor, node: Tensor, offset: Tensor) -> Tensor:
    """Depth-`depth` nodes [n, W] (beams, or a target's prefix) and the seen-only depth-(depth + 1) nodes of each
    row, node [n, T] / offset [n, T] from `history_nodes` -> the offset of each child slot [n, W, M] in
    `trie.children` order (0 for every other child). O(n W T): only a seen-only node's parent has one."""
    n, W = nodes.shape
    out = torch.zeros(n, W, trie.max_children[depth], device=nodes.device)
    parent = trie.parent[depth][node.clamp(min=0)]  # [n, T]
    hit = (nodes[:, :, None] == parent[:, None, :]) & (node >= 0)[:, None, :]  # [n, W, T]
    row, beam, j = hit.nonzero(as_tuple=True)
    slot = node[row, j] - trie.child_start[depth][nodes[row, beam]]
    out[row, beam, slot] = offset[row, j].to(out.dtype)
    return out
