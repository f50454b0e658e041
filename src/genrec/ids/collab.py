"""Collaborative item embeddings for the semantic IDs (the `collab` stage, run by `genrec.stages`).

Text embeddings put items that read alike under one prefix; the model then has to tell apart, deep in the
code, the items a user actually buys next. A SASRec trained on the training split (full softmax, selected on
validation, through the same trainer and evaluator) places items that are bought in the same contexts close
together, so the first codes already narrow the choice the way the next purchase does.

Writes, in the stage directory (nothing but the stamp when `collab.enabled` is false):
- `item_embeddings_raw.npy`: float32 [N, D], the SASRec item embeddings. An item seen in fewer than
  `collab.min_item_count` training sequences has learnt little but to be a negative, like every other such item
  (on Beauty 33 items never occur in training and collapse onto one point), so it takes instead the mean
  embedding of its `collab.text_neighbours` nearest items by text (cosine of the embed stage's vectors) among
  those seen often enough;
- `item_embeddings_l2norm.npy`: float32 [N, D], the same rows centred (minus the mean row, a direction shared by
  all items that would otherwise dominate the first k-means level) and L2-normalised: what `quantize` reads;
- `item_ids.json`: the item ids in row order;
- `sasrec/`: the SASRec run (log, summary, `best/`) and `summary.json` with its validation scores.

The SASRec is the `model.sasrec` section, trained with the `collab` section's schedule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrec.files import save_json, save_npy
from genrec.rundir import EMBEDDINGS, ITEM_IDS, RAW_EMBEDDINGS


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised, float32 (a zero row stays zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def centred_unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows minus the mean row, then L2-normalised (a row that becomes zero stays zero)."""
    return unit_rows(x - x.mean(0, keepdims=True))


def item_counts(sequences: list[np.ndarray], num_items: int) -> np.ndarray:
    """[N] the number of sequences each item occurs in."""
    counts = np.zeros(num_items, dtype=np.int64)
    for seq in sequences:
        counts[np.unique(np.asarray(seq, dtype=np.int64))] += 1
    return counts


def borrow_from_text_neighbours(collab: np.ndarray, text: np.ndarray, cold: np.ndarray, k: int,
                                chunk: int = 1024) -> np.ndarray:
    """`collab` [N, D] with each `cold` [N] row replaced by the mean collab row of its k nearest warm items by
    the cosine of `text` [N, E] (L2-normalised rows)."""
    import torch

    warm = np.flatnonzero(~cold)
    cold_rows = np.flatnonzero(cold)
    out = collab.copy()
    if len(warm) == 0 or len(cold_rows) == 0:
        return out
    k = min(k, len(warm))
    warm_text, warm_collab = torch.from_numpy(text[warm]), torch.from_numpy(collab[warm])
    for lo in range(0, len(cold_rows), chunk):
        rows = cold_rows[lo : lo + chunk]
        near = (torch.from_numpy(text[rows]) @ warm_text.T).topk(k, dim=1).indices  # [c, k] into warm
        out[rows] = warm_collab[near].mean(1).numpy()
    return out


def write_collab_embeddings(item_embeddings: np.ndarray, *, item_ids: list[str], cold: np.ndarray,
                            text: np.ndarray | None, text_neighbours: int, out_dir: Path) -> np.ndarray:
    """Write the stage's files from a trained SASRec's item embeddings [N, D]: each `cold` [N] row replaced by
    the mean of its text neighbours' (`text` [N, E], L2-normalised; needed when any item is cold), then the
    centred unit rows. Returns the raw rows written."""
    raw = item_embeddings
    if cold.any():
        assert text is not None
        raw = borrow_from_text_neighbours(raw, text, cold, text_neighbours)
    save_npy(out_dir / RAW_EMBEDDINGS, raw)
    save_npy(out_dir / EMBEDDINGS, centred_unit_rows(raw))
    save_json(out_dir / ITEM_IDS, list(item_ids))
    return raw
