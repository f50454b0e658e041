"""The reverse direction for people: what a semantic-ID prefix stands for, as the most common leaf categories and
title words of the catalogue items under it ("Nail Polish · opi, lacquer, shimmer")."""

from __future__ import annotations

from collections import Counter

import numpy as np

from genrec.query.data import content_words, leaf_category, title_of


class PrefixIndex:
    """Counts of leaf categories and title words under every prefix of 1..`depth` levels."""

    def __init__(self, items: list[dict], sids: np.ndarray, *, depth: int = 2) -> None:
        self.depth = min(depth, sids.shape[1])
        self.sids = np.asarray(sids)
        self.cats: dict[tuple[int, ...], Counter] = {}
        self.words: dict[tuple[int, ...], Counter] = {}
        for fields, sid in zip(items, self.sids.tolist()):
            leaf, words = leaf_category(fields), content_words(title_of(fields))
            for d in range(1, self.depth + 1):
                key = tuple(sid[:d])
                if leaf:
                    self.cats.setdefault(key, Counter())[leaf] += 1
                self.words.setdefault(key, Counter()).update(words)

    def describe_prefix(self, prefix: tuple[int, ...], *, categories: int = 2, words: int = 4) -> dict:
        """{"prefix", "items", "categories", "words"} for a prefix of 1..depth codes (empty lists when no item
        has it)."""
        prefix = tuple(int(c) for c in prefix)
        cats = self.cats.get(prefix, Counter())
        return {"prefix": list(prefix), "items": int((self.sids[:, : len(prefix)] == prefix).all(1).sum()),
                "categories": [c for c, _ in cats.most_common(categories)],
                "words": [w for w, _ in self.words.get(prefix, Counter()).most_common(words)]}

    def describe_item(self, row: int) -> str:
        """One line about the prefix of `depth` levels that item `row` shares with its neighbours."""
        d = self.describe_prefix(tuple(self.sids[row, : self.depth].tolist()))
        return f"{' / '.join(d['categories'])} · {', '.join(d['words'])}".strip(" ·")
