"""Train / validation / test splits of chronological user sequences.

Two protocols, chosen by `data.split`:

- ``leave_one_out`` (TIGER, P5, SASRec): for a user with sequence s of n >= 3 items, the training sequence is
  s[:-2]; the validation target is s[-2] with history s[:-2]; the test target is s[-1] with history s[:-1].
  Users with n < 3 cannot give both targets and a non-empty history: they are left out of validation and test,
  and their training sequence is s[:-2] as for everyone else, which for n < 3 is empty, so they contribute
  nothing (no item of theirs is trained on without being evaluated elsewhere). Their number is logged.
- ``temporal``: two global cut times, t_valid and t_test, at the (1 - valid_fraction - test_fraction) and
  (1 - test_fraction) quantiles of all interaction times (numpy's linear interpolation, rounded up to whole
  seconds). Training uses each user's items before t_valid. A
  user with an interaction in [t_valid, t_test) gives one validation example: the first such item is the target
  and every earlier item of the user is the history; a user with an interaction at or after t_test gives one
  test example in the same way (its history may include validation-window items). Users whose history would be
  empty are left out of that evaluation set.

Histories are never truncated here; batching and the models keep the most recent `max_history` items.
Every training position >= 1 is a target whose history is the items before it, so no validation or test
target is ever inside its own history or inside the training data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from genrec.config import DataConfig
from genrec.data.cold import held_out_items, without_items
from genrec.data.loaders import Dataset
from genrec.errors import GenrecError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class EvalSet:
    """One held-out item per user, with everything the user did before it."""

    users: np.ndarray  # [N] user indices (int64), ascending
    histories: list[np.ndarray]  # N arrays of item indices before the target, oldest first (not truncated)
    targets: np.ndarray  # [N] item index of the held-out item (int64)

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True, eq=False)
class Split:
    train: list[np.ndarray]  # per user (index = user index, may be empty): the training sequence
    valid: EvalSet
    test: EvalSet


def _eval_set(users: list[int], histories: list[np.ndarray], targets: list[int]) -> EvalSet:
    return EvalSet(users=np.array(users, dtype=np.int64), histories=histories,
                   targets=np.array(targets, dtype=np.int64))


def leave_one_out(sequences: list[np.ndarray]) -> Split:
    """Last item of each user for test, second-to-last for validation (see the module docstring)."""
    train: list[np.ndarray] = []
    valid: tuple[list[int], list[np.ndarray], list[int]] = ([], [], [])
    test: tuple[list[int], list[np.ndarray], list[int]] = ([], [], [])
    short = 0
    for user, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)
        train.append(seq[:-2])
        if len(seq) < 3:
            short += 1
            continue
        for (users, histories, targets), end in ((valid, len(seq) - 2), (test, len(seq) - 1)):
            users.append(user)
            histories.append(seq[:end])
            targets.append(int(seq[end]))
    if short:
        logger.info("leave-one-out: %d of %d users have fewer than 3 items and are not evaluated", short,
                    len(sequences))
    return Split(train=train, valid=_eval_set(*valid), test=_eval_set(*test))


def temporal_split(sequences: list[np.ndarray], timestamps: list[np.ndarray], *, valid_fraction: float,
                   test_fraction: float) -> Split:
    """Global time cuts at the (1 - valid - test) and (1 - test) quantiles (see the module docstring).

    Each user's timestamps must be non-decreasing (the loaders sort them).
    """
    if not (0 < valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ValueError(f"valid_fraction={valid_fraction} and test_fraction={test_fraction} must be in (0, 1) "
                         "and sum to less than 1")
    if len(timestamps) != len(sequences):
        raise ValueError(f"{len(timestamps)} timestamp arrays for {len(sequences)} sequences")
    every = np.concatenate([np.asarray(t, dtype=np.int64) for t in timestamps] + [np.zeros(0, np.int64)])
    if len(every) == 0:
        empty = _eval_set([], [], [])
        return Split(train=[np.zeros(0, np.int64) for _ in sequences], valid=empty, test=empty)
    # timestamps are integers, so `time >= cut` equals `time >= ceil(cut)`; the tolerance absorbs float noise
    # such as 1 - 0.2 - 0.2 = 0.6000000000000001, which would otherwise move a cut from 6 to 6.000000000000001
    t_valid, t_test = (int(np.ceil(np.quantile(every, q) - 1e-6))
                       for q in (1 - valid_fraction - test_fraction, 1 - test_fraction))
    train: list[np.ndarray] = []
    valid: tuple[list[int], list[np.ndarray], list[int]] = ([], [], [])
    test: tuple[list[int], list[np.ndarray], list[int]] = ([], [], [])
    for user, (seq, times) in enumerate(zip(sequences, timestamps)):
        seq, times = np.asarray(seq, dtype=np.int64), np.asarray(times, dtype=np.int64)
        if len(seq) != len(times):
            raise ValueError(f"user {user}: {len(seq)} items but {len(times)} timestamps")
        if np.any(np.diff(times) < 0):
            raise ValueError(f"user {user}: timestamps are not in chronological order")
        start_valid = int(np.searchsorted(times, t_valid, side="left"))  # first index with time >= t_valid
        start_test = int(np.searchsorted(times, t_test, side="left"))  # first index with time >= t_test
        train.append(seq[:start_valid])
        if start_valid < start_test and start_valid > 0:  # an item in [t_valid, t_test) with something before it
            valid[0].append(user)
            valid[1].append(seq[:start_valid])
            valid[2].append(int(seq[start_valid]))
        if start_test < len(seq) and start_test > 0:
            test[0].append(user)
            test[1].append(seq[:start_test])
            test[2].append(int(seq[start_test]))
    logger.info("temporal split: t_valid=%d, t_test=%d; %d validation and %d test users of %d", t_valid, t_test,
                len(valid[0]), len(test[0]), len(sequences))
    return Split(train=train, valid=_eval_set(*valid), test=_eval_set(*test))


def make_split(dataset: Dataset, cfg: DataConfig) -> Split:
    """The split named by `cfg.split` ("leave_one_out" or "temporal"), without the held-out new items'
    interactions in its training part when `cfg.cold_items` > 0 (`genrec.data.cold`)."""
    split = _split(dataset, cfg)
    if cfg.cold_items > 0:
        held = held_out_items(dataset, cfg)
        split = Split(train=without_items(split.train, held), valid=split.valid, test=split.test)
    return split


def _split(dataset: Dataset, cfg: DataConfig) -> Split:
    if cfg.split == "leave_one_out":
        return leave_one_out(dataset.sequences)
    if cfg.split == "temporal":
        if dataset.timestamps is None:
            raise GenrecError(f"data.split=temporal needs timestamps, but data.format={cfg.format} data has none; "
                              "use data.split=leave_one_out")
        return temporal_split(dataset.sequences, dataset.timestamps, valid_fraction=cfg.valid_fraction,
                              test_fraction=cfg.test_fraction)
    raise GenrecError(f"data.split={cfg.split!r} is not one of leave_one_out, temporal")
