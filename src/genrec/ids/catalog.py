"""The catalogue of a run: item IDs, their text fields and text embeddings, which items are new (in no training
sequence), and (once quantized) their semantic IDs, level sizes and prefix trie."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genrec.errors import GenrecError
from genrec.ids.trie import Trie, build_trie


def fingerprint(*parts: Any) -> str:
    """A short digest of arrays and JSON-able values."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            h.update(part.tobytes() + str((part.dtype.str, part.shape)).encode())
        else:
            h.update(json.dumps(part).encode())
    return h.hexdigest()[:16]


@dataclass
class Catalog:
    item_ids: list[str]
    items: list[dict[str, Any]]  # text fields per item
    sids: np.ndarray | None = None  # [N, C] int64 semantic IDs with the collision level; None before quantize
    codebook_size: int = 0  # K of the quantizer levels (the collision level has its own size)
    text: np.ndarray | None = None  # [N, E] float32 L2-normalised text embeddings (the embed stage's); None without
    new_items: np.ndarray | None = None  # [N] bool: items no training sequence holds (new, cold-start items)
    _trie: Trie | None = field(default=None, repr=False)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def require_sids(self) -> np.ndarray:
        if self.sids is None:
            raise GenrecError("this catalogue has no semantic IDs yet; run 'genrec quantize' first")
        return self.sids

    @property
    def level_sizes(self) -> list[int]:
        """Codes per level: K for each quantizer level, then as many as the collision level uses."""
        sids = self.require_sids()
        return [self.codebook_size] * (sids.shape[1] - 1) + [int(sids[:, -1].max()) + 1]

    @property
    def trie(self) -> Trie:
        if self._trie is None:
            self._trie = build_trie(self.require_sids())
        return self._trie

    def fingerprint(self, with_sids: bool) -> str:
        """Identifies the items (and, for a model that generates them, their semantic IDs) a model was trained on."""
        return fingerprint(self.item_ids, *([self.require_sids()] if with_sids else []))

    def index(self) -> dict[str, int]:
        """Item ID -> row."""
        return {item: i for i, item in enumerate(self.item_ids)}
