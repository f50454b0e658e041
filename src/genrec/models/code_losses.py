"""The generative head's per-level losses: cross-entropy over the codes a trie node allows, and the teacher's
next-item distribution summed to each level's codes (distillation).

Items no training sequence holds (new items: held out, or never interacted with) did not exist for training, so
neither loss may treat them as negatives: the softmax over a node's children leaves out the children with only
new items under them (`training_child_mask`), and the teacher's mass on new items is dropped before it is summed
to codes. (With `trie_softmax=false` the softmax runs over every code of a level, which new items share with
known ones, so nothing can be left out.) Otherwise training would teach the model to bury exactly the items a
new-item protocol measures."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from genrec.models.tiger import Tiger


def masked_cross_entropy(z: Tensor, target: Tensor, mask: Tensor, label_smoothing: float) -> Tensor:
    """Cross-entropy of logits z [n, K] restricted to the codes in mask [n, K] (the target's among them); label
    smoothing spreads over those codes only. A row with a single allowed code contributes zero loss."""
    logp = F.log_softmax(z.masked_fill(~mask, float("-inf")), dim=-1)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    if label_smoothing:
        smooth = -torch.where(mask, logp, 0.0).sum(1) / mask.sum(1)
        nll = (1 - label_smoothing) * nll + label_smoothing * smooth
    return nll.mean()


def _trained_nodes(model: Tiger) -> list[Tensor] | None:
    """Per depth 1..C, which trie nodes hold at least one training item (not `model.new_items`); None when every
    item is a training item. Cached until `new_items` or the trie's device changes."""
    new, trie = model.new_items, model.trie
    key = (new.device, new.data_ptr(), new._version, trie.num_items)
    cached = model.__dict__.get("_trained_nodes")
    if cached is None or cached[0] != key:
        trained = None
        if bool(new.any()):
            old = F.pad((~new)[trie.leaf_item].long().cumsum(0), (1, 0))  # [N + 1] training items in leaf order
            trained = [old[first[1:]] > old[first[:-1]]
                       for first in (trie.first_leaf(depth) for depth in range(1, model.num_levels + 1))]
        cached = model.__dict__["_trained_nodes"] = (key, trained)
    return cached[1]


def training_child_mask(model: Tiger, level: int, nodes: Tensor) -> Tensor:
    """nodes [n] at depth `level` -> [n, K_level] bool: the codes a training softmax runs over, those leading to
    a child with at least one training item under it (all children when no item is new). Every training
    target's own path passes it."""
    trained = _trained_nodes(model)
    if trained is None:
        return model.trie.child_mask(level, nodes, model.level_sizes[level])
    trie = model.trie
    child, valid = trie.children(level, nodes)  # [n, M]
    valid = valid & trained[level][child]
    K = model.level_sizes[level]
    mask = torch.zeros(nodes.shape[0], K + 1, dtype=torch.bool, device=nodes.device)
    mask.scatter_(1, torch.where(valid, trie.node_code[level][child], K), True)
    return mask[:, :K]


def without_new_items(model: Tiger, item_probs: Tensor) -> Tensor:
    """A teacher's next-item distribution [n, N] with no mass on new items (code_distributions renormalises)."""
    return item_probs if _trained_nodes(model) is None else item_probs.masked_fill(model.new_items, 0.0)


def code_distributions(model: Tiger, item_probs: Tensor, targets: Tensor) -> list[Tensor]:
    """A distribution over items [n, N] and target items [n] -> per level l, the distribution over level
    l's codes [n, K_l] of an item drawn from it, given that it starts with the target's first l codes:
    q_l(k) = sum of p(i) over items i with codes[:l] = the target's and code k at level l, normalised.
    Rows whose prefix has no mass are all zero.

    Level 0 sums the whole catalogue by code. Below it, the items under the target's prefix are a contiguous
    run of the trie's leaf order, at most as long as the largest subtree of that depth, so each child's mass
    is a difference of one running sum over that short window."""
    trie, device = model.trie, item_probs.device
    n, N = item_probs.shape
    first_leaf = model.__dict__.get("_first_leaf")  # per depth: each node's first leaf in leaf order, + the end
    if first_leaf is None or first_leaf[0].device != device or first_leaf[-1].numel() != N + 1:
        first_leaf = [trie.first_leaf(d) for d in range(model.num_levels + 1)]
        model.__dict__["_first_leaf"] = first_leaf
    mass0 = torch.zeros(n, model.level_sizes[0], device=device).index_add_(1, model.item_codes[:, 0], item_probs)
    out = [mass0 / mass0.sum(1, keepdim=True).clamp(min=1e-30)]
    paths = trie.paths(targets)  # [n, C]
    for level in range(1, model.num_levels):
        start = first_leaf[level][paths[:, level]]  # [n] the prefix's leaves are start : end
        end = first_leaf[level][paths[:, level] + 1]
        width = int((first_leaf[level][1:] - first_leaf[level][:-1]).max())
        leaf = start[:, None] + torch.arange(width, device=device)  # [n, W]
        inside = leaf < end[:, None]
        window = item_probs.gather(1, trie.leaf_item[leaf.clamp(max=N - 1)]).masked_fill(~inside, 0.0)
        cum = F.pad(window.cumsum(1, dtype=torch.float64), (1, 0))  # [n, W + 1]
        child, valid = trie.children(level, paths[:, level])  # [n, M]
        lo = (first_leaf[level + 1][child] - start[:, None]).clamp(0, width)
        hi = (first_leaf[level + 1][child + 1] - start[:, None]).clamp(0, width)
        mass = torch.where(valid, cum.gather(1, hi) - cum.gather(1, lo), 0.0)
        mass = mass / mass.sum(1, keepdim=True).clamp(min=1e-300)
        K = model.level_sizes[level]
        q = torch.zeros(n, K + 1, dtype=torch.float64, device=device)
        q.scatter_(1, torch.where(valid, trie.node_code[level][child], K), mass)
        out.append(q[:, :K].float())
    return out
