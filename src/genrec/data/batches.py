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
from torch import Tensor


@dataclass
class Batch:
    """What every model reads: histories, and in training or evaluation the targets."""

    users: Tensor  # [B] user bucket ids (0 = unknown user)
    history: Tensor  # [B, T] item indices, left-padded with -1 (most recent item last)
    targets: Tensor | None = None  # [B] the item after the history; or [B, T] the item after each history
    #                                 position (-1: none), which needs a causal encoder; None at inference

    def to(self, device: torch.device | str) -> Batch:
        targets = None if self.targets is None else self.targets.to(device)
        return Batch(self.users.to(device), self.history.to(device), targets)


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

    def epoch_batches(self, epoch: int, batch_size: int, seed: int, order: str = "length") -> list[np.ndarray]:
        """One epoch as global batches of example indices, grouped by history length (little padding) or, with
        order "random", drawn uniformly."""
        return _epoch_batches(self.history_len, epoch, batch_size, seed, order)

    def num_targets(self, index: np.ndarray) -> int:
        return len(index)

    def batch(self, index: np.ndarray) -> Batch:
        s = self.seq_index[index]
        return collate(self.seqs, s, self.end[index], self.users[s], self.max_history)


class TrainWindows:
    """Whole training sequences as windows of at most max_history + 1 items, every position a target, for a
    causal encoder that trains all of a window's targets in one pass.

    A sequence longer than the window is covered by windows starting every max_history // 2 items (and
    one ending at its last item); each target belongs to exactly one window, the one giving it the longest
    history (at most max_history items, at least max_history // 2 + 1 once the sequence is long enough),
    so every target is trained once per epoch, as with one example per target.
    """

    def __init__(self, train: list[np.ndarray], users: np.ndarray, max_history: int) -> None:
        self.seqs = Sequences.from_list(train)
        self.users, self.max_history = users, max_history
        H, stride = max_history, max(1, max_history // 2)
        rows = []  # (sequence, start, end, first owned target, end of owned targets): positions in the sequence
        for u, m in enumerate(self.seqs.lengths().tolist()):
            if m < 2:
                continue
            starts = sorted(set(range(0, max(m - H - 1, 0), stride)) | {max(m - H - 1, 0)})
            own_lo = 1
            for st in starts:  # target i goes to the first window that holds it: st + H >= i
                own_hi = min(st + H + 1, m)
                rows.append((u, st, own_hi, own_lo, own_hi))
                own_lo = own_hi
        self.rows = np.array(rows, dtype=np.int64).reshape(-1, 5)
        self.length = self.rows[:, 2] - self.rows[:, 1]
        self.targets = int((self.rows[:, 4] - self.rows[:, 3]).sum())

    def __len__(self) -> int:
        return len(self.rows)

    def epoch_batches(self, epoch: int, batch_size: int, seed: int, order: str = "length") -> list[np.ndarray]:
        return _epoch_batches(self.length, epoch, batch_size, seed, order)

    def num_targets(self, index: np.ndarray) -> int:
        return int((self.rows[index, 4] - self.rows[index, 3]).sum())

    def batch(self, index: np.ndarray) -> Batch:
        u, st, en, lo, hi = self.rows[index].T
        n = en - st  # [B] window lengths
        L = int(n.max())
        pad = L - n
        slot = np.arange(L)[None, :]
        valid = slot >= pad[:, None]
        pos = st[:, None] + slot - pad[:, None]  # [B, L] position in the sequence
        items = np.where(valid, self.seqs.items[self.seqs.offsets[u][:, None] + np.where(valid, pos, 0)], -1)
        owned = valid[:, 1:] & (pos[:, 1:] >= lo[:, None]) & (pos[:, 1:] < hi[:, None])
        targets = np.where(owned, items[:, 1:], -1)
        return Batch(users=torch.from_numpy(self.users[u]), history=torch.from_numpy(items[:, :-1]),
                     targets=torch.from_numpy(targets))


def _epoch_batches(lengths: np.ndarray, epoch: int, batch_size: int, seed: int, how: str) -> list[np.ndarray]:
    """Shuffle; for "length", sort by length within windows of 64 batches; cut into batches, shuffle the batches."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * 64 if how == "length" else len(order) + 1
    batches = []
    for lo in range(0, len(order), window):
        chunk = order[lo : lo + window]
        if how == "length":
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size:  # drop the ragged tail batch
        batches.pop()
    return [batches[i] for i in rng.permutation(len(batches))]


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
