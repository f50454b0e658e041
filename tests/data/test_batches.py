"""Batches: training examples and windows (every target once, with the history right before it), evaluation
batches sharded over processes, and hashed user tokens."""

from __future__ import annotations

import numpy as np

from genrec.data.batches import Batch, TrainExamples, TrainWindows, eval_batches, user_buckets


def test_long_sequences_train_every_target_once_with_enough_history():
    H = 6
    seq = np.arange(100, 125)  # 25 items: several windows
    windows = TrainWindows([seq, np.arange(3)], np.array([0, 0]), H)
    batch = windows.batch(np.arange(len(windows)))
    seen = []
    for history, targets in zip(batch.history.tolist(), batch.targets.tolist()):
        for j, t in enumerate(targets):
            if t >= 0:
                hist = [h for h in history[: j + 1] if h >= 0]
                first = 100 if t >= 100 else 0
                assert hist == list(range(t - len(hist), t))  # the items right before the target
                available = t - first  # items before the target in its sequence
                if available <= H:
                    assert len(hist) == available
                else:
                    assert H // 2 + 1 <= len(hist) <= H
                seen.append(t)
    assert sorted(seen) == [1, 2] + list(range(101, 125))
    assert windows.targets == len(seen) == windows.num_targets(np.arange(len(windows)))


def test_train_examples_hand_computed():
    train = [np.array([5, 6, 7]), np.array([9]), np.array([1, 2])]
    examples = TrainExamples(train, np.array([3, 4, 8]), max_history=1)
    assert len(examples) == 2 + 0 + 1  # every position >= 1 is a target; a one-item sequence gives none
    batch = examples.batch(np.arange(3))
    assert batch.history.tolist() == [[5], [6], [1]]  # truncated to the most recent item
    assert batch.targets.tolist() == [6, 7, 2] and batch.users.tolist() == [3, 3, 8]
    wide = TrainExamples(train, np.array([3, 4, 8]), max_history=5).batch(np.array([1, 2]))
    assert wide.history.tolist() == [[5, 6], [-1, 1]]  # left-padded to the longest history in the batch


def test_epoch_batches_cover_every_example_once_and_depend_on_seed_and_epoch():
    rng = np.random.default_rng(0)
    train = [rng.integers(0, 50, rng.integers(2, 15)) for _ in range(40)]
    examples = TrainExamples(train, np.zeros(40, dtype=np.int64), max_history=8)
    batches = examples.epoch_batches(0, 16, seed=1)
    assert all(len(b) == 16 for b in batches)  # the ragged tail batch is dropped
    flat = np.concatenate(batches)
    assert len(set(flat.tolist())) == len(flat) == len(examples) // 16 * 16  # each once, but the tail
    again = examples.epoch_batches(0, 16, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, examples.epoch_batches(1, 16, seed=1)))


def test_length_ordered_batches_hold_similar_lengths_and_random_ones_mix_them():
    rng = np.random.default_rng(0)
    train = [rng.integers(0, 50, rng.integers(2, 15)) for _ in range(400)]
    examples = TrainExamples(train, np.zeros(400, dtype=np.int64), max_history=8)
    spread = lambda bs: np.mean([np.ptp(examples.history_len[b]) for b in bs])  # noqa: E731  lengths in a batch
    grouped, mixed = examples.epoch_batches(0, 16, 1), examples.epoch_batches(0, 16, 1, "random")
    assert spread(grouped) <= 1.0 and spread(mixed) >= 5.0  # histories are 1 to 8 long
    flat = np.concatenate(mixed)
    assert len(set(flat.tolist())) == len(flat) == len(examples) // 16 * 16  # each once, but the tail
    assert all(np.array_equal(a, b) for a, b in zip(mixed, examples.epoch_batches(0, 16, 1, "random")))


def test_eval_batches_shard_users_and_truncate_histories():
    histories = [np.arange(n) + 10 * u for u, n in enumerate([3, 1, 5, 2, 4, 6, 1])]
    targets = np.arange(7) + 100
    users = np.arange(7) + 1
    seen: list[int] = []
    for rank in range(2):
        for idx, batch in eval_batches(histories, targets, users, max_history=4, batch_size=2, rank=rank,
                                       world_size=2):
            assert isinstance(batch, Batch) and len(idx) <= 2
            assert set(idx.tolist()) <= set(range(rank, 7, 2))  # indices[rank::world_size]
            for row, i in enumerate(idx.tolist()):
                kept = histories[i][-4:].tolist()
                assert batch.history[row].tolist() == [-1] * (batch.history.shape[1] - len(kept)) + kept
                assert int(batch.targets[row]) == targets[i] and int(batch.users[row]) == users[i]
            seen += idx.tolist()
    assert sorted(seen) == list(range(7))  # every user exactly once over the two processes


def test_user_buckets_are_stable_and_reserve_zero():
    ids = [f"U{n:05d}" for n in range(200)]
    buckets = user_buckets(ids, 16)
    assert buckets.dtype == np.int64 and buckets.min() >= 1 and buckets.max() <= 16
    assert len(set(buckets.tolist())) == 16  # 200 users spread over every bucket
    np.testing.assert_array_equal(user_buckets(ids, 16), buckets)  # a hash of the ID, not of the process
    assert user_buckets(["U00003"], 16)[0] == buckets[3]
    assert user_buckets(ids, 0).tolist() == [0] * 200  # no user tokens: everyone is the unknown user
