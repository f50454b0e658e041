"""Random semantic IDs: every item gets uniformly random codes (seeded), whatever its vector. A floor for
comparing quantizers: what the model makes of IDs that say nothing about the items."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from genrec.files import save_json


class RandomIDs:
    def __init__(self, *, num_levels: int, codebook_size: int, seed: int = 0) -> None:
        self.num_levels, self.codebook_size, self.seed = num_levels, codebook_size, seed
        self.stats: dict = {}

    def fit(self, x: np.ndarray, collab: np.ndarray | None = None) -> np.ndarray:
        return np.random.default_rng(self.seed).integers(0, self.codebook_size, size=(len(x), self.num_levels))

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Random codes seeded by each row's bytes: the same vector always gets the same codes."""
        rows = np.ascontiguousarray(x, dtype=np.float32)
        return np.stack([np.random.default_rng([self.seed, zlib.crc32(r.tobytes())]).integers(
            0, self.codebook_size, self.num_levels) for r in rows]).reshape(len(rows), self.num_levels)

    def save(self, directory: Path) -> None:
        save_json(Path(directory) / "random_ids.json", {"seed": self.seed})

    @classmethod
    def load(cls, directory: Path, *, num_levels: int, codebook_size: int) -> RandomIDs:
        import json

        seed = json.loads((Path(directory) / "random_ids.json").read_text())["seed"]
        return cls(num_levels=num_levels, codebook_size=codebook_size, seed=seed)
