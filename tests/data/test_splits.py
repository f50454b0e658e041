"""Leave-one-out and temporal splits: targets, histories, windows, short users, no leaks."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.config import DataConfig
from genrec.data.cold import held_out_items, training_items
from genrec.data.loaders import Dataset
from genrec.data.splits import leave_one_out, make_split, temporal_split
from genrec.errors import GenrecError


def _random_sequences(seed: int = 0, users: int = 200, items: int = 500) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(items)[: rng.integers(0, 12)].astype(np.int64) for _ in range(users)]


def test_leave_one_out_targets_histories_and_no_leaks():
    sequences = _random_sequences()
    split = leave_one_out(sequences)
    long_users = [u for u, s in enumerate(sequences) if len(s) >= 3]
    assert split.valid.users.tolist() == long_users and split.test.users.tolist() == long_users
    assert len(split.train) == len(sequences)
    for n, u in enumerate(long_users):
        s = sequences[u]
        assert split.valid.targets[n] == s[-2] and split.test.targets[n] == s[-1]
        assert split.valid.histories[n].tolist() == s[:-2].tolist()
        assert split.test.histories[n].tolist() == split.valid.histories[n].tolist() + [split.valid.targets[n]]
        assert split.valid.targets[n] not in split.valid.histories[n]
        assert split.test.targets[n] not in split.test.histories[n]
        assert split.train[u].tolist() == s[:-2].tolist()
        assert split.valid.targets[n] not in split.train[u] and split.test.targets[n] not in split.train[u]
    assert split.valid.targets.dtype == np.int64 and split.valid.users.dtype == np.int64


def test_leave_one_out_short_users_are_not_evaluated():
    sequences = [np.array([4], dtype=np.int64), np.array([], dtype=np.int64), np.array([1, 2], dtype=np.int64),
                 np.array([5, 6, 7], dtype=np.int64)]
    split = leave_one_out(sequences)
    assert [t.tolist() for t in split.train] == [[], [], [], [5]]
    assert split.valid.users.tolist() == [3] and split.valid.targets.tolist() == [6]
    assert split.test.users.tolist() == [3] and split.test.targets.tolist() == [7]
    assert split.test.histories[0].tolist() == [5, 6]


def _temporal_case():
    # timestamps 1..10 overall; with valid=test=0.2 the cuts are t_valid=6.4 and t_test=8.2
    sequences = [[0, 1, 2], [3, 4], [5, 6], [1, 3, 0]]
    timestamps = [[1, 7, 9], [2, 3], [8, 10], [4, 5, 6]]
    return ([np.array(s, dtype=np.int64) for s in sequences], [np.array(t, dtype=np.int64) for t in timestamps])


def test_temporal_split_hand_computed():
    sequences, timestamps = _temporal_case()
    split = temporal_split(sequences, timestamps, valid_fraction=0.2, test_fraction=0.2)
    assert [t.tolist() for t in split.train] == [[0], [3, 4], [], [1, 3, 0]]
    assert split.valid.users.tolist() == [0]  # user 2's first window item has an empty history: dropped
    assert split.valid.targets.tolist() == [1] and [h.tolist() for h in split.valid.histories] == [[0]]
    assert split.test.users.tolist() == [0, 2]
    assert split.test.targets.tolist() == [2, 6] and [h.tolist() for h in split.test.histories] == [[0, 1], [5]]


def test_temporal_split_cut_times_belong_to_the_later_window():
    # 11 times 0..10: the cuts fall exactly on t_valid=6 and t_test=8, which open their windows
    sequences = [np.arange(11, dtype=np.int64)]
    split = temporal_split(sequences, [np.arange(11, dtype=np.int64)], valid_fraction=0.2, test_fraction=0.2)
    assert split.train[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert split.valid.targets.tolist() == [6] and split.valid.histories[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert split.test.targets.tolist() == [8] and split.test.histories[0].tolist() == list(range(8))


def test_temporal_split_respects_windows_on_random_data():
    rng = np.random.default_rng(1)
    sequences = _random_sequences(seed=2)
    timestamps = [np.sort(rng.integers(0, 1000, len(s))).astype(np.int64) for s in sequences]
    split = temporal_split(sequences, timestamps, valid_fraction=0.1, test_fraction=0.15)
    every = np.concatenate(timestamps)
    t_valid, t_test = np.quantile(every, 0.75), np.quantile(every, 0.85)
    for u, (s, t) in enumerate(zip(sequences, timestamps)):
        assert split.train[u].tolist() == s[t < t_valid].tolist()
    for eval_set, low, high in ((split.valid, t_valid, t_test), (split.test, t_test, np.inf)):
        assert len(eval_set.users) > 0
        for n, u in enumerate(eval_set.users):
            s, t = sequences[u], timestamps[u]
            j = int(np.flatnonzero((t >= low) & (t < high))[0])
            assert eval_set.targets[n] == s[j] and eval_set.histories[n].tolist() == s[:j].tolist()
            assert len(eval_set.histories[n]) > 0 and eval_set.targets[n] not in eval_set.histories[n]
        expected = [u for u, t in enumerate(timestamps) if np.any((t >= low) & (t < high))
                    and np.flatnonzero((t >= low) & (t < high))[0] > 0]
        assert eval_set.users.tolist() == expected


def test_temporal_split_rejects_unsorted_times():
    with pytest.raises(ValueError, match="chronological"):
        temporal_split([np.array([0, 1])], [np.array([5, 1])], valid_fraction=0.2, test_fraction=0.2)


def test_make_split_dispatches_and_needs_timestamps_for_temporal():
    sequences, timestamps = _temporal_case()
    items = [{} for _ in range(7)]
    users = [str(u) for u in range(4)]
    with_times = Dataset(item_ids=[str(i) for i in range(7)], items=items, user_ids=users, sequences=sequences,
                         timestamps=timestamps)
    split = make_split(with_times, DataConfig(split="temporal", valid_fraction=0.2, test_fraction=0.2))
    assert split.test.targets.tolist() == [2, 6]
    split = make_split(with_times, DataConfig(split="leave_one_out"))
    assert split.test.targets.tolist() == [2, 0]
    without = Dataset(item_ids=with_times.item_ids, items=items, user_ids=users, sequences=sequences,
                      timestamps=None)
    with pytest.raises(GenrecError, match=r"use data\.split=leave_one_out"):
        make_split(without, DataConfig(split="temporal"))


def _dataset(sequences: list[np.ndarray], num_items: int, timestamps=None) -> Dataset:
    return Dataset(item_ids=[str(i) for i in range(num_items)], items=[{} for _ in range(num_items)],
                   user_ids=[str(u) for u in range(len(sequences))], sequences=sequences, timestamps=timestamps)


def test_held_out_new_items_leave_the_training_part_and_nothing_else():
    seqs = _random_sequences(seed=5, users=300, items=200)
    data = _dataset(seqs, 200)
    plain = make_split(data, DataConfig())
    cfg = DataConfig(cold_items=0.1, cold_seed=3)
    split = make_split(data, cfg)
    held = held_out_items(data, cfg)
    assert held.sum() == 20 and (held == held_out_items(data, cfg)).all()  # the share asked for, seeded
    assert not (held == held_out_items(data, DataConfig(cold_items=0.1, cold_seed=4))).all()
    assert not training_items(split.train, 200)[held].any()  # no interaction with a held-out item is trained on
    for before, after in zip(plain.train, split.train):  # the rest of each training sequence, in order
        assert after.tolist() == [i for i in before.tolist() if not held[i]]
    for a, b in ((plain.valid, split.valid), (plain.test, split.test)):  # evaluation users, histories, targets
        assert a.targets.tolist() == b.targets.tolist() and a.users.tolist() == b.users.tolist()
        assert all(x.tolist() == y.tolist() for x, y in zip(a.histories, b.histories))
    cold_users = ~training_items(split.train, 200)[split.test.targets]
    assert held[split.test.targets].sum() > 0 and (cold_users >= held[split.test.targets]).all()
    assert not held_out_items(data, DataConfig()).any()


def test_newest_items_are_those_first_seen_last_and_need_timestamps():
    seqs = [np.array([0, 1, 2]), np.array([3, 1, 4]), np.array([4, 0])]
    times = [np.array([1, 2, 9]), np.array([3, 4, 5]), np.array([6, 7])]
    cfg = DataConfig(cold_items=0.4, cold_items_by="newest")  # 2 of 5 items; first seen: 0@1 1@2 2@9 3@3 4@5
    assert np.flatnonzero(held_out_items(_dataset(seqs, 5, times), cfg)).tolist() == [2, 4]
    with pytest.raises(GenrecError, match="data.cold_items_by=newest needs timestamps.*cold_items_by=random"):
        held_out_items(_dataset(seqs, 5), cfg)
