"""A prefix trie of the catalogue's semantic IDs, stored as flat arrays (CSR per level).

Items are sorted lexicographically by their codes. A node at depth d is a distinct prefix of length d; the
nodes of one depth are numbered in sorted order, so the children of a node are a contiguous range of the
next depth's nodes. Memory is O(number of nodes) = O(N * C) integers, whatever the codebook size.

    child_start[d]  [N_d + 1]   children of depth-d node n are depth-(d+1) nodes child_start[d][n] : [n+1]
    node_code[d]    [N_{d+1}]   the last code of each depth-(d+1) node
    parent[d]       [N_{d+1}]   its depth-d parent
    leaf_item       [N]         the item index of each leaf (depth C node)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Trie:
    child_start: list[Tensor]
    node_code: list[Tensor]
    parent: list[Tensor]
    max_children: list[int]
    leaf_item: Tensor  # [N]
    item_leaf: Tensor  # [N] inverse of leaf_item

    @property
    def depth(self) -> int:
        return len(self.node_code)

    @property
    def num_items(self) -> int:
        return int(self.leaf_item.numel())

    def num_nodes(self, depth: int) -> int:
        return int(self.child_start[depth].numel() - 1) if depth < self.depth else self.num_items

    def nbytes(self) -> int:
        tensors = [*self.child_start, *self.node_code, *self.parent, self.leaf_item, self.item_leaf]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str) -> Trie:
        move = lambda ts: [t.to(device) for t in ts]  # noqa: E731
        return Trie(move(self.child_start), move(self.node_code), move(self.parent), self.max_children,
                    self.leaf_item.to(device), self.item_leaf.to(device))

    def children(self, depth: int, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """nodes [...] at `depth` -> (child node ids [..., M], valid [..., M]), M = max children at that depth."""
        start, end = self.child_start[depth][nodes], self.child_start[depth][nodes + 1]
        offs = torch.arange(self.max_children[depth], device=nodes.device)
        child = start[..., None] + offs  # [..., M]
        valid = child < end[..., None]
        return torch.where(valid, child, 0), valid

    def first_leaf(self, depth: int) -> Tensor:
        """[N_depth + 1]: each depth-`depth` node's first leaf in leaf order, then N; the leaves under node n are
        first_leaf[n] : first_leaf[n + 1]."""
        first = torch.arange(self.num_items + 1, device=self.leaf_item.device)
        for d in range(self.depth - 1, depth - 1, -1):
            first = first[self.child_start[d]]
        return first

    def num_children(self, depth: int, nodes: Tensor) -> Tensor:
        """nodes [...] at `depth` -> how many children each has [...]."""
        return self.child_start[depth][nodes + 1] - self.child_start[depth][nodes]

    def paths(self, items: Tensor) -> Tensor:
        """items [...] -> [..., C]: the depth-d node on each item's path (its ID's first d codes) for d < C."""
        leaf = self.item_leaf[items]
        path = [leaf]
        for d in range(self.depth - 1, 0, -1):
            path.append(self.parent[d][path[-1]])
        path.append(torch.zeros_like(leaf))  # the root
        return torch.stack(path[:0:-1], dim=-1)

    def prefix_codes(self, depth: int, nodes: Tensor) -> Tensor:
        """nodes [n] at `depth` -> their codes [n, depth] (the prefix each node stands for)."""
        codes = []
        for d in range(depth - 1, -1, -1):
            codes.append(self.node_code[d][nodes])
            nodes = self.parent[d][nodes]
        return torch.stack(codes[::-1], dim=1) if codes else nodes.new_empty(nodes.shape[0], 0)

    def child_mask(self, depth: int, nodes: Tensor, num_codes: int) -> Tensor:
        """nodes [n] at `depth` -> [n, num_codes] bool: which codes lead to a child."""
        child, valid = self.children(depth, nodes)
        mask = torch.zeros(nodes.shape[0], num_codes + 1, dtype=torch.bool, device=nodes.device)
        mask.scatter_(1, torch.where(valid, self.node_code[depth][child], num_codes), True)
        return mask[:, :num_codes]

    def contains(self, codes: Tensor) -> Tensor:
        """codes [B, C] -> [B] bool: is this a complete semantic ID of a catalogue item? (reference check)"""
        node = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
        ok = torch.ones(codes.shape[0], dtype=torch.bool, device=codes.device)
        for d in range(self.depth):
            child, valid = self.children(d, node)
            match = valid & (self.node_code[d][child] == codes[:, d : d + 1])
            ok &= match.any(1)
            node = child.gather(1, match.float().argmax(1, keepdim=True)).squeeze(1)
        return ok


def build_trie(item_codes: np.ndarray | Tensor) -> Trie:
    """item_codes [N, C] (one distinct row per item) -> Trie. Raises ValueError on a malformed array or on two
    items with one ID."""
    codes = torch.as_tensor(np.asarray(item_codes), dtype=torch.long)
    if codes.ndim != 2 or codes.shape[0] == 0:
        raise ValueError(f"semantic IDs must be a non-empty [items, levels] array, got shape {tuple(codes.shape)}")
    N, C = codes.shape
    order = torch.from_numpy(np.lexsort(codes.numpy().T[::-1]).copy())  # sort by level 0, then 1, ...
    s = codes[order]  # [N, C] sorted
    differs = torch.ones(N, C, dtype=torch.bool)
    differs[1:] = s[1:] != s[:-1]
    new_node = differs.cumsum(1) > 0  # [N, C]: row starts a new depth-(d+1) node
    if not bool(new_node[:, -1].all()):
        raise ValueError("two items share a semantic ID")
    child_start, node_code, parent, max_children = [], [], [], []
    prev_id = torch.zeros(N, dtype=torch.long)  # depth-0 node id of each row (the root)
    for d in range(C):
        ids = new_node[:, d].long().cumsum(0) - 1  # depth-(d+1) node id of each row
        first = new_node[:, d]
        node_code.append(s[first, d].contiguous())
        par = prev_id[first].contiguous()
        parent.append(par)
        counts = torch.bincount(par, minlength=int(prev_id.max()) + 1)
        child_start.append(torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]))
        max_children.append(int(counts.max()))
        prev_id = ids
    leaf_item = order
    item_leaf = torch.empty_like(order)
    item_leaf[order] = torch.arange(N)
    return Trie(child_start, node_code, parent, max_children, leaf_item, item_leaf)
