"""New (cold-start) items: which items count as cold, and the new-item protocol that holds some out.

LIGER's definition: an item is a training item when it occurs anywhere in the training part of a sequence;
a validation or test user whose target is not one is cold. On Amazon Beauty that leaves only about a hundred
cold test users, too few for a stable number, so the new-item protocol (`data.cold_items` > 0) holds out a
share of the catalogue as if it had just been added: every interaction with a held-out item is removed from
the training part, so neither the collaborative embeddings, the quantizer's fit nor any model weight sees one.
The items stay in the catalogue with their text (their semantic IDs come from the fitted quantizer's `encode`,
their collaborative vectors from their text neighbours), and in the histories and targets of validation and
test users, which is how a user meets a new item. The users whose target is held out are the cold slice.

`data.cold_items_by` chooses them: "random" (a seeded sample, `data.cold_seed`) or "newest" (the items whose
first interaction is latest, for data with timestamps: the realistic case of items launched last).
"""

from __future__ import annotations

import numpy as np

from genrec.config import DataConfig
from genrec.data.loaders import Dataset
from genrec.errors import GenrecError


def training_items(train: list[np.ndarray], num_items: int) -> np.ndarray:
    """[N] bool: whether each item occurs anywhere in the training part (LIGER's in-set items; the rest are cold)."""
    seen = np.zeros(num_items, dtype=bool)
    for seq in train:
        seen[np.asarray(seq, dtype=np.int64)] = True
    return seen


def held_out_items(dataset: Dataset, cfg: DataConfig) -> np.ndarray:
    """[N] bool: the items the new-item protocol holds out (none when `cfg.cold_items` is 0)."""
    n_items = len(dataset.item_ids)
    held = np.zeros(n_items, dtype=bool)
    count = int(round(cfg.cold_items * n_items))
    if count == 0:
        return held
    if cfg.cold_items_by == "random":
        held[np.random.default_rng(cfg.cold_seed).choice(n_items, size=count, replace=False)] = True
        return held
    if dataset.timestamps is None:
        raise GenrecError(f"data.cold_items_by=newest needs timestamps, but data.format={cfg.format} data has none; "
                          "use data.cold_items_by=random")
    first = np.full(n_items, np.iinfo(np.int64).max, dtype=np.int64)
    for seq, times in zip(dataset.sequences, dataset.timestamps):
        np.minimum.at(first, np.asarray(seq, dtype=np.int64), np.asarray(times, dtype=np.int64))
    order = np.lexsort((np.arange(n_items), first))  # by first interaction, ties by item index
    held[order[n_items - count :]] = True
    return held


def without_items(train: list[np.ndarray], held: np.ndarray) -> list[np.ndarray]:
    """Each training sequence with the `held` [N] items removed."""
    return [seq[~held[seq]] for seq in train]
