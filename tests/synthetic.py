"""A small synthetic dataset in the P5 format, with learnable structure, for tests and the tiny recipe.

Items belong to a few product kinds; each user prefers one kind and mostly walks through it in order
(item j is usually followed by item j + 1 of the same kind), so next-item prediction is learnable and item
text (kind, shade) carries the signal that semantic IDs pick up.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

KINDS = ["lipstick", "shampoo", "eyeliner", "nail polish", "face cream", "perfume", "conditioner", "mascara"]
COLORS = ["red", "pink", "nude", "coral", "plum", "black", "brown", "gold", "silver", "blue", "green", "ivory"]


def write_synthetic(directory: Path, *, num_users: int = 300, items_per_kind: int = 12, seed: int = 0) -> None:
    """Write user_sequence.txt.gz and item_meta.jsonl.gz into `directory`."""
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n_items = len(KINDS) * items_per_kind
    asin = [f"S{i:05d}" for i in range(n_items)]
    lines, order = [], []
    for u in range(num_users):
        kind = int(rng.integers(len(KINDS)))
        pos = int(rng.integers(items_per_kind))
        seq: list[int] = []
        while len(seq) < int(rng.integers(5, 13)):
            item = kind * items_per_kind + pos
            if item not in seq:
                seq.append(item)
            pos = (pos + 1) % items_per_kind if rng.random() < 0.8 else int(rng.integers(items_per_kind))
            if rng.random() < 0.1:
                kind = int(rng.integers(len(KINDS)))
        lines.append(" ".join([f"U{u:05d}"] + [asin[i] for i in seq]))
        order += [i for i in seq if i not in order]
    missing = [i for i in range(n_items) if i not in order]
    if missing:  # every item must appear in some sequence
        lines.append(" ".join([f"U{num_users:05d}"] + [asin[i] for i in missing]))
        order += missing
    with gzip.open(directory / "user_sequence.txt.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    with gzip.open(directory / "item_meta.jsonl.gz", "wt") as f:
        for p5_id, i in enumerate(order, start=1):
            kind, shade = KINDS[i // items_per_kind], COLORS[i % items_per_kind % len(COLORS)]
            title = f"Glow &amp; Co {shade} {kind} no. {i % items_per_kind}"
            cats = [["Beauty", "Makeup" if kind in ("lipstick", "eyeliner", "mascara") else "Care", kind.title()]]
            f.write(json.dumps({"asin": asin[i], "p5_item_id": p5_id, "title": title, "categories": cats}) + "\n")
