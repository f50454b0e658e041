"""Query examples made from the item text of a run: query -> item pairs for training, held-out queries for
measuring, and the reverse tasks (semantic ID -> title, -> category) for language models.

Training templates, per item: the full title; `train_windows` partial titles (contiguous windows of 2 to 5
title words); the item's category path; its leaf category plus one title word. The held-out template is one
no training query uses: 2 or 3 of the item's content words (no stop words, numbers or units), drawn anywhere in
the title and shuffled, followed by the leaf category, such as "shimmer opi nail polish". A held-out query whose
text or word set equals a training query of the same item is redrawn, so a hit measures generalisation, not a
memorised string. Held-out items keep their training queries: the catalogue is fixed, the phrasing is new.
"""

from __future__ import annotations

import html
import random
import re
from dataclasses import dataclass

STOP = frozenset("""a an and the of for with to in on by or at from as is it its this that your you our new
 set pack count piece pcs pc oz fl ml g mg lb lbs ounce ounces inch inches size x w""".split())
_WORD = re.compile(r"[a-z0-9]+(?:['&.+-][a-z0-9]+)*")


@dataclass(frozen=True)
class Example:
    query: str
    item: int  # catalogue row
    template: str  # title, window, category, category+word (training) or held-out


@dataclass(frozen=True)
class QueryData:
    train: list[Example]
    valid: list[Example]  # held-out queries of `held_out` items, for every choice (epochs, weights)
    test: list[Example]  # held-out queries of `held_out` other items, for the reported numbers


def normalise(text: str) -> str:
    """Lower case, single spaces: how queries are compared (and what the encoder's uncased tokenizer sees)."""
    return " ".join(_WORD.findall(html.unescape(text).lower()))


def title_of(fields: dict) -> str:
    return html.unescape(str(fields.get("title") or "")).strip()


def category_path(fields: dict) -> list[str]:
    """The item's first category path without its root (every Amazon category starts with the dataset's name)."""
    cats = fields.get("categories") or []
    path = cats[0] if cats and isinstance(cats[0], list) else cats
    path = [html.unescape(str(c)) for c in path if str(c).strip()]
    return path[1:] if len(path) > 1 else path


def leaf_category(fields: dict) -> str:
    path = category_path(fields)
    return path[-1] if path else ""


def content_words(title: str) -> list[str]:
    """Title words a person would type: no stop words, pure numbers or units; in order, without repeats."""
    seen: dict[str, None] = {}
    for w in _WORD.findall(title.lower()):
        if w not in STOP and not any(ch.isdigit() for ch in w) and len(w) > 1:
            seen.setdefault(w, None)
    return list(seen)


def held_out_query(fields: dict, rng: random.Random, avoid: set[str] = frozenset()) -> str | None:
    """The held-out template for one item (None when its title has fewer than 3 content words). Query texts or
    word sets in `avoid` (normalised) are redrawn up to 20 times."""
    words, leaf = content_words(title_of(fields)), normalise(leaf_category(fields))
    if len(words) < 3:
        return None
    for _ in range(20):
        pick = rng.sample(words, rng.choice((2, 3)))
        query = normalise(" ".join([*pick, leaf]))
        if query not in avoid and " ".join(sorted(query.split())) not in avoid:
            return query
    return None


def training_queries(fields: dict, rng: random.Random, windows: int) -> list[tuple[str, str]]:
    """(template, query) pairs of one item for training."""
    title, path = title_of(fields), category_path(fields)
    out = [("title", title)] if title else []
    raw = title.split()
    for _ in range(windows if len(raw) > 2 else 0):
        n = rng.randint(2, min(5, len(raw) - 1))
        start = rng.randrange(len(raw) - n + 1)
        out.append(("window", " ".join(raw[start:start + n])))
    if path:
        out.append(("category", " ".join(path)))
        words = content_words(title)
        if words:
            out.append(("category+word", f"{path[-1]} {rng.choice(words)}"))
    return [(t, q) for t, q in out if normalise(q)]


def _keys(query: str) -> set[str]:
    n = normalise(query)
    return {n, " ".join(sorted(n.split()))}


def make_queries(items: list[dict], *, seed: int, held_out: int, windows: int) -> QueryData:
    """Training examples for every item, and one held-out query for each of `held_out` validation items and
    `held_out` other test items (seeded)."""
    rng = random.Random(seed)
    train: list[Example] = []
    per_item: list[set[str]] = []
    for row, fields in enumerate(items):
        pairs = training_queries(fields, rng, windows)
        train += [Example(q, row, t) for t, q in pairs]
        per_item.append(set().union(*(_keys(q) for _, q in pairs)) if pairs else set())
    every_train = set().union(*per_item) if per_item else set()
    order = list(range(len(items)))
    rng.shuffle(order)
    held: list[Example] = []
    for row in order:
        if len(held) >= 2 * held_out:
            break
        query = held_out_query(items[row], rng, every_train)
        if query is not None:
            held.append(Example(query, row, "held-out"))
    return QueryData(train, held[:held_out], held[held_out:])


def reverse_examples(items: list[dict], tokens: list[str]) -> list[tuple[str, str, str]]:
    """(task, semantic-ID tokens, text) for the reverse tasks: an item's ID -> its title, -> its category path."""
    out = []
    for fields, tok in zip(items, tokens):
        if title_of(fields):
            out.append(("title", tok, title_of(fields)))
        if category_path(fields):
            out.append(("category", tok, " > ".join(category_path(fields))))
    return out
