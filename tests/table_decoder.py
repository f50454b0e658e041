"""A `CodeDecoder` that is not a Tiger: log p(code | user, prefix) read off random tables, so that search can be
checked on its own against a reference that sums those tables over each item's codes by scanning the ID list."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from genrec.data.batches import Batch
from genrec.ids.trie import Trie

PRIMES = (7, 13, 29, 53)
BUCKETS = 17


def _bucket(prefix: Tensor) -> Tensor:
    """prefix codes [..., d] -> a pseudo-random bucket per prefix [...]."""
    weights = torch.tensor(PRIMES[: prefix.shape[-1]], dtype=torch.long, device=prefix.device)
    return (prefix * weights).sum(-1) % BUCKETS


class TableDecoder:
    """logit(user b, prefix p, next code c) = U[b, d, c] + P[d, bucket(p), c], softmax over the trie's children.
    The state is the original index of each user still searched (`keep_users` subsets it)."""

    def __init__(self, trie: Trie, num_users: int, num_codes: int, *, exact_by_beam: bool, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.trie, self.exact_by_beam = trie, exact_by_beam
        self.U = torch.randn(num_users, trie.depth, num_codes, generator=g) * 2
        self.P = torch.randn(trie.depth, BUCKETS, num_codes, generator=g) * 2
        self.visits: list[tuple[int, Tensor]] = []  # (depth, nodes [B, W]) of every child_log_probs call

    def logits(self, users: Tensor, depth: int, prefix: Tensor, code: Tensor) -> Tensor:
        """users [B], prefix [B, W, d], code [B, W, M] -> [B, W, M]."""
        per_user = self.U[users, depth].gather(1, code.flatten(1)).view(code.shape)
        per_prefix = self.P[depth][_bucket(prefix)[..., None], code]
        return per_user + per_prefix

    def start(self, batch: Batch) -> Tensor:
        return torch.arange(batch.history.shape[0])

    def child_log_probs(self, state: Tensor, depth: int, nodes: Tensor, prefix: Tensor, code: Tensor,
                        valid: Tensor, live: Tensor) -> tuple[Tensor, Tensor]:
        self.visits.append((depth, nodes))
        z = self.logits(state, depth, prefix, code).masked_fill(~valid, float("-inf"))
        logp = torch.log_softmax(z, -1)
        return logp.masked_fill(~valid, float("-inf")).nan_to_num(nan=float("-inf")), state

    def select(self, state: Tensor, parent: Tensor) -> Tensor:
        return state

    def keep_users(self, state: Tensor, keep: Tensor) -> Tensor:
        return state[keep]

    def target_log_probs(self, state: Tensor, targets: Tensor) -> Tensor:
        trie = self.trie
        path = trie.paths(targets)  # [B, C]
        codes = trie.prefix_codes(trie.depth, trie.item_leaf[targets])  # [B, C]
        total = torch.zeros(targets.shape[0])
        for d in range(trie.depth):
            child, valid = trie.children(d, path[:, d : d + 1])  # [B, 1, M]
            code = trie.node_code[d][child]
            logp, _ = self.child_log_probs(state, d, path[:, d : d + 1], codes[:, None, :d], code, valid,
                                           torch.ones_like(valid[..., 0]))
            total += logp.masked_fill(~(valid & (code == codes[:, d, None, None])), 0.0).sum((1, 2))
        return total

    def reference_scores(self, item_codes: np.ndarray) -> Tensor:
        """log p(item) for every user and item [B, N], from the ID list alone (no trie)."""
        ids = [tuple(row) for row in np.asarray(item_codes).tolist()]
        B = self.U.shape[0]
        out = torch.zeros(B, len(ids))
        for item, codes in enumerate(ids):
            for level in range(len(codes)):
                allowed = sorted({i[level] for i in ids if i[:level] == codes[:level]})
                prefix = torch.tensor(codes[:level], dtype=torch.long).expand(B, 1, level)
                code = torch.tensor(allowed).expand(B, 1, len(allowed))
                logp = torch.log_softmax(self.logits(torch.arange(B), level, prefix, code), -1)[:, 0]
                out[:, item] += logp[:, allowed.index(codes[level])]
        return out
