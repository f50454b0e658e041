"""Turning (user, history, target) examples into padded tensor batches, with as little padding as possible.

Sequences live in one flat CSR array (`items`, `offsets`); an example is (sequence index, end position): its
history is the up-to-`max_history` items before `end`, its target the item at `end` (or a separate target
array for evaluation). Batches are padded on the left to the longest history *in the batch*, never to
`max_history`, and training batches group examples of similar length.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from genrec.tiger import Batch


def user_buckets(user_ids: list[str], num_buckets: int) -> np.ndarray:
    """Stable hashed user tokens in 1..num_buckets (0 is reserved for an unknown user)."""
    if num_buckets == 0:
        return np.zeros(len(user_ids), dtype=np.int64)
    return np.array([1 + zlib.crc32(u.encode()) % num_buckets for u in user_ids], dtype=np.int64)


@dataclass(frozen=True)
class Sequences:
    items: np.ndarray  # [total] item indices, sequence after sequence
    offsets: np.ndarray  # [S + 1]

    @classmethod
    def from_list(cls, seqs: list[np.ndarray]) -> Sequences:
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        items = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if seqs else np.zeros(0, np.int64)
        return cls(items, np.concatenate([[0], np.cumsum(lengths)]))

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def collate(seqs: Sequences, seq_index: np.ndarray, end: np.ndarray, users: np.ndarray, max_history: int,
            targets: np.ndarray | None = None) -> Batch:
    """Examples (seq_index[b], end[b]) -> Batch with histories [B, T], T = longest history in the batch."""
    n = np.minimum(end, max_history)  # [B] history lengths
    T = max(int(n.max()), 1)
    start = seqs.offsets[seq_index] + end  # [B] one past the last history item
    pos = start[:, None] - T + np.arange(T)[None, :]  # [B, T]
    valid = np.arange(T)[None, :] >= (T - n)[:, None]
    history = np.where(valid, seqs.items[np.where(valid, pos, 0)], -1)
    if targets is None:
        targets = seqs.items[start]
    return Batch(users=torch.from_numpy(users), history=torch.from_numpy(history),
                 targets=torch.from_numpy(np.asarray(targets, dtype=np.int64)))


class TrainExamples:
    """Every position >= 1 of every training sequence is one example (its history is what precedes it)."""

    def __init__(self, train: list[np.ndarray], users: np.ndarray, max_history: int) -> None:
        self.seqs = Sequences.from_list(train)
        lengths = self.seqs.lengths()
        self.seq_index = np.repeat(np.arange(len(train)), np.maximum(lengths - 1, 0))
        firsts = np.concatenate([[0], np.cumsum(np.maximum(lengths - 1, 0))])[:-1]
        self.end = np.arange(len(self.seq_index)) - np.repeat(firsts, np.maximum(lengths - 1, 0)) + 1
        self.users, self.max_history = users, max_history
        self.history_len = np.minimum(self.end, max_history)

    def __len__(self) -> int:
        return len(self.seq_index)

    def epoch_batches(self, epoch: int, batch_size: int, seed: int) -> list[np.ndarray]:
        """One epoch as a list of global batches of example indices: shuffled, then grouped by length within
        windows of 64 batches so that little padding is wasted; batch order shuffled again."""
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self))
        window = batch_size * 64
        batches = []
        for lo in range(0, len(order), window):
            chunk = order[lo : lo + window]
            chunk = chunk[np.argsort(self.history_len[chunk], kind="stable")]
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        if len(batches) > 1 and len(batches[-1]) < batch_size:  # drop the ragged tail batch
            batches.pop()
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, index: np.ndarray) -> Batch:
        s = self.seq_index[index]
        return collate(self.seqs, s, self.end[index], self.users[s], self.max_history)


def eval_batches(histories: list[np.ndarray], targets: np.ndarray, users: np.ndarray, *, max_history: int,
                 batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[tuple[np.ndarray, Batch]]:
    """This rank's share (indices[rank::world_size]) of an evaluation set, in batches of similar length.
    Yields (example indices, Batch); `users` are bucket ids per example."""
    seqs = Sequences.from_list(histories)
    mine = np.arange(len(histories))[rank::world_size]
    lengths = np.minimum(seqs.lengths()[mine], max_history)
    mine = mine[np.argsort(lengths, kind="stable")]
    for lo in range(0, len(mine), batch_size):
        idx = mine[lo : lo + batch_size]
        yield idx, collate(seqs, idx, seqs.lengths()[idx], users[idx], max_history, targets[idx])
