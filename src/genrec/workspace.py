"""What training, evaluation and recommendation read from the earlier stages of a run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genrec.batches import user_buckets
from genrec.config import Config
from genrec.errors import GenrecError
from genrec.prepare import load_prepared
from genrec.splits import Split, make_split
from genrec.trie import Trie, build_trie


@dataclass
class Workspace:
    """The catalogue, split, user tokens and semantic IDs of a run directory."""

    item_ids: list[str]
    items: list[dict[str, Any]]
    split: Split
    user_bucket: np.ndarray  # [U] hashed user tokens
    item_codes: np.ndarray  # [N, C] semantic IDs with the collision level
    level_sizes: list[int]
    trie: Trie


def load_codes(quantize_dir: Path, num_items: int) -> np.ndarray:
    path = quantize_dir / "codes_with_suffix.npy"
    try:
        codes = np.load(path)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise GenrecError(f"cannot read {path} ({type(err).__name__}); run 'genrec quantize' (or pass --force)")
    if codes.ndim != 2 or codes.shape[0] != num_items:
        raise GenrecError(f"{path} covers {codes.shape[0]} items but the catalog has {num_items}; "
                          f"rerun 'genrec quantize' (or pass --force)")
    return codes.astype(np.int64)


def load_workspace(cfg: Config, run_dir: Path, item_codes: np.ndarray | None = None) -> Workspace:
    """The run's workspace; `item_codes` [N, C] stands in for the quantize stage's semantic IDs when given."""
    dataset = load_prepared(run_dir / "prepare")
    if item_codes is None:
        codes = load_codes(run_dir / "quantize", len(dataset.item_ids))
    else:
        codes = np.asarray(item_codes, dtype=np.int64)
    K = cfg.quantize.codebook_size
    if item_codes is None and codes[:, :-1].max() >= K:
        raise GenrecError(f"{run_dir / 'quantize'} has codes >= quantize.codebook_size={K}; rerun 'genrec quantize'")
    sizes = [K] * (codes.shape[1] - 1) + [int(codes[:, -1].max()) + 1]
    return Workspace(dataset.item_ids, dataset.items, make_split(dataset, cfg.data),
                     user_buckets(dataset.user_ids, cfg.model.num_user_buckets), codes, sizes, build_trie(codes))
