"""Loaders (`load_p5`, `load_amazon2014`) that turn interaction data into one in-memory `Dataset` (items, users, chronological sequences).

Three source formats, chosen by `data.format`:

- ``p5``: the P5/TIGER Amazon files (`user_sequence.txt.gz`, `item_meta.jsonl.gz`), kept exactly as they are
  (already 5-core, already in time order, no timestamps). Item index i is the i-th item met when reading
  `user_sequence` top to bottom, left to right, which equals P5's `p5_item_id - 1`.
- ``amazon2014``: the raw McAuley 2014 files `reviews_<category>_5.json.gz` (JSON lines) and
  `meta_<category>.json.gz` (Python dict literals, parsed with `ast.literal_eval`, never `eval`).
- ``table`` (in `table.py`): a CSV or Parquet file of interactions (`user`, `item`, optional `timestamp`) and
  an optional table of item text (`item` plus any other columns).

For ``amazon2014`` and ``table`` each user's interactions are sorted by time (stable: file order on ties),
repeated (user, item) pairs are dropped keeping the earliest (unless `data.keep_repeats`), and an iterative k-core filter with
k = `data.min_interactions` keeps users and items with at least k interactions (0 disables it). Users are
indexed in order of first appearance in the source, items in order of first appearance in the sorted
sequences (users in index order, each sequence left to right), so every load is deterministic.

Item fields hold only the values that are present: a missing title, brand, price, ... is absent from the
item's dict (never None), and an item with no text at all has an empty dict.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genrec.config import DataConfig
from genrec.errors import GenrecError

logger = logging.getLogger(__name__)

AMAZON_FIELDS = ("title", "brand", "categories", "price", "description")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Items, users and each user's chronological item sequence, all indexed from 0."""

    item_ids: list[str]  # external id of item index i (e.g. ASIN)
    items: list[dict[str, Any]]  # text fields per item index; missing fields are absent
    user_ids: list[str]  # external id of user index u
    sequences: list[np.ndarray]  # per user: item indices (int64), oldest first
    timestamps: list[np.ndarray] | None  # per user: unix seconds (int64) aligned with sequences; None if unknown

    def __post_init__(self) -> None:
        if len(self.items) != len(self.item_ids):
            raise ValueError(f"{len(self.items)} item field dicts for {len(self.item_ids)} item ids")
        if len(self.sequences) != len(self.user_ids):
            raise ValueError(f"{len(self.sequences)} sequences for {len(self.user_ids)} user ids")
        if self.timestamps is not None and [len(t) for t in self.timestamps] != [len(s) for s in self.sequences]:
            raise ValueError("timestamps are not aligned with sequences")

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return sum(len(s) for s in self.sequences)


# ----------------------------------------------------------------------------------------------- file helpers


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number from 1, line) of a text file, gzip-compressed when its name ends in .gz."""
    lineno = 0
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
            for lineno, line in enumerate(f, 1):
                yield lineno, line
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise GenrecError(f"{path} is corrupt near line {lineno + 1} ({one_line(err)}); "
                          "re-download or re-create the file") from None


def _find(directory: Path, names: list[str], what: str) -> Path:
    """The first of `names` that exists in `directory`, else a GenrecError saying how to fix data.path."""
    if not directory.is_dir():
        raise GenrecError(f"data directory {directory} does not exist; pass data.path=<directory with {what}>")
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise GenrecError(f"{' or '.join(str(directory / n) for n in names)} not found; "
                      f"pass data.path=<directory with {what}>")


def json_line(path: Path, lineno: int, line: str, fix: str = "fix or re-download the file") -> dict[str, Any]:
    """One JSON-lines record, which must be an object; GenrecError naming the file, the line and `fix`."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise GenrecError(f"{path} line {lineno} is not valid JSON ({err.msg}); {fix}") from None
    if not isinstance(obj, dict):
        raise GenrecError(f"{path} line {lineno} is not a JSON object; {fix}")
    return obj


def _require_keys(obj: dict[str, Any], keys: tuple[str, ...], path: Path, lineno: int) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise GenrecError(f"{path} line {lineno} lacks {', '.join(missing)}; fix or re-download the file")


# ----------------------------------------------------------------------------------------------- indexing


def _kcore(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Mask of the interactions in the k-core (users and items with >= k interactions), and the rounds taken."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 0:
        return keep, 0
    num_users, num_items = int(users.max()) + 1, int(items.max()) + 1
    rounds = 0
    while True:
        rounds += 1
        user_count = np.bincount(users[keep], minlength=num_users)
        item_count = np.bincount(items[keep], minlength=num_items)
        new = keep & (user_count[users] >= k) & (item_count[items] >= k)
        if new.sum() == keep.sum():
            return keep, rounds
        keep = new


def index_interactions(users: list[str], items: list[str], times: np.ndarray | None, *, min_interactions: int,
           source: Path, keep_repeats: bool = False) -> tuple[list[str], list[str], list[np.ndarray], list[np.ndarray] | None]:
    """Sort, de-duplicate (unless `keep_repeats`), k-core filter and index interactions given in file order.

    Returns (user_ids, item_ids, sequences, timestamps) as described in the module docstring.
    """
    if not users:
        raise GenrecError(f"{source} holds no interactions; pass a non-empty file")
    user_codes, user_names = pd.factorize(np.asarray(users, dtype=object))  # order of first appearance in the file
    item_codes, item_names = pd.factorize(np.asarray(items, dtype=object))
    position = np.arange(len(user_codes))
    keys = (position, user_codes) if times is None else (position, times, user_codes)
    order = np.lexsort(keys)  # by user, then time, then file order
    u, i = user_codes[order], item_codes[order]
    t = None if times is None else np.asarray(times, dtype=np.int64)[order]
    fresh = np.ones(len(u), dtype=bool) if keep_repeats else \
        ~pd.DataFrame({"u": u, "i": i}).duplicated(keep="first").to_numpy()
    if not fresh.all():
        logger.info("%s: dropped %d repeated (user, item) pairs, keeping the earliest", source, int((~fresh).sum()))
    u, i = u[fresh], i[fresh]
    t = None if t is None else t[fresh]
    keep, rounds = _kcore(u, i, min_interactions)
    if not keep.any():
        raise GenrecError(f"no interactions left in {source} after the {min_interactions}-core filter "
                          f"(data.min_interactions={min_interactions}); lower it, e.g. data.min_interactions=0")
    if min_interactions > 0:
        logger.info("%s: %d-core filter kept %d of %d interactions after %d rounds", source, min_interactions,
                    int(keep.sum()), len(keep), rounds)
    u, i = u[keep], i[keep]
    t = None if t is None else t[keep]
    kept_users, new_u = np.unique(u, return_inverse=True)  # codes ascend in order of first appearance
    new_i, kept_items = pd.factorize(i)  # order of first appearance in the sorted sequences
    user_ids = [str(user_names[c]) for c in kept_users]
    item_ids = [str(item_names[c]) for c in kept_items]
    bounds = np.flatnonzero(np.diff(new_u)) + 1
    sequences = np.split(new_i.astype(np.int64), bounds)
    timestamps = None if t is None else np.split(t, bounds)
    return user_ids, item_ids, sequences, timestamps


# ----------------------------------------------------------------------------------------------- P5


def load_p5(cfg: DataConfig) -> Dataset:
    """user_sequence.txt(.gz) and, where there is one, item_meta.jsonl(.gz) (some P5 releases, e.g. Amazon Sports,
    ship without it: the items then have no text). The meta file is read first, so that a token of the
    sequences that names no item of it is reported against the sequence line it is on."""
    directory = Path(cfg.path).expanduser()
    what = "user_sequence.txt.gz (and optionally item_meta.jsonl.gz)"
    seq_path = _find(directory, ["user_sequence.txt.gz", "user_sequence.txt"], what)
    meta_path = next((directory / n for n in ("item_meta.jsonl.gz", "item_meta.jsonl") if (directory / n).is_file()),
                     None)
    meta: dict[str, tuple[int, dict[str, Any]]] = {}  # asin -> (line, record)
    if meta_path is None:
        logger.warning("%s has no item_meta.jsonl(.gz): the items have no text", directory)
    else:
        for lineno, line in _read_lines(meta_path):
            if line.strip():
                obj = json_line(meta_path, lineno, line)
                _require_keys(obj, ("asin",), meta_path, lineno)
                meta[str(obj["asin"])] = (lineno, obj)
    item_index: dict[str, int] = {}
    user_ids: list[str] = []
    sequences: list[np.ndarray] = []
    seen_users: set[str] = set()
    first_line: dict[str, tuple[int, str]] = {}  # item -> (line, user) of its first appearance
    for lineno, line in _read_lines(seq_path):
        fields = line.split()
        if not fields:
            continue
        user, asins = fields[0], fields[1:]
        if user in seen_users:
            raise GenrecError(f"{seq_path} line {lineno} repeats user {user}; each user must have one line")
        seen_users.add(user)
        user_ids.append(user)
        for a in asins:
            first_line.setdefault(a, (lineno, user))
        sequences.append(np.array([item_index.setdefault(a, len(item_index)) for a in asins], dtype=np.int64))
    if not user_ids:
        raise GenrecError(f"{seq_path} holds no users; pass a non-empty file")
    items: list[dict[str, Any]] = [{} for _ in item_index]
    found = 0
    for asin, (lineno, obj) in meta.items():
        index = item_index.get(asin)
        if index is None:
            continue
        if "p5_item_id" in obj and obj["p5_item_id"] != index + 1:
            unlisted = next((a for a in item_index if a not in meta and item_index[a] < index), None) \
                if obj["p5_item_id"] < index + 1 else None
            if unlisted is not None:  # a token of the sequences shifted the numbering: report it where it is
                line, user = first_line[unlisted]
                raise GenrecError(f"{seq_path} line {line} (user {user}) has item {unlisted!r}, which "
                                  f"{meta_path.name} does not list, so the items after it no longer match their "
                                  f"p5_item_id; fix or drop that token")
            raise GenrecError(f"{meta_path} line {lineno}: item {asin} has p5_item_id {obj['p5_item_id']} "
                              f"but is item {index + 1} in order of first appearance in {seq_path.name}; "
                              "the two files do not belong together")
        items[index] = {k: v for k, v in obj.items() if k not in ("asin", "p5_item_id") and v is not None}
        found += 1
    if meta_path is not None and found < len(items):
        logger.warning("%d of %d items have no line in %s; their text fields are empty", len(items) - found,
                       len(items), meta_path)
    return Dataset(item_ids=list(item_index), items=items, user_ids=user_ids, sequences=sequences, timestamps=None)


# ----------------------------------------------------------------------------------------------- Amazon 2014


def _meta_line(path: Path, lineno: int, line: str) -> dict[str, Any]:
    """One meta line: JSON, else a Python dict literal (ast.literal_eval evaluates nothing)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(line.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise GenrecError(f"{path} line {lineno} is neither JSON nor a Python dict literal; "
                              "fix or re-download the file") from None
    if not isinstance(obj, dict):
        raise GenrecError(f"{path} line {lineno} is not a dict; fix or re-download the file")
    return obj


def _price(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            price = float(value.strip().lstrip("$").replace(",", ""))
        except ValueError:
            return None
        return price if math.isfinite(price) else None
    return None


def _amazon_fields(obj: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("title", "brand", "description"):
        if obj.get(name) is not None:
            fields[name] = str(obj[name])
    paths = obj.get("categories")
    if isinstance(paths, (list, tuple)):
        fields["categories"] = [[str(c) for c in p] if isinstance(p, (list, tuple)) else [str(p)] for p in paths]
    price = _price(obj.get("price"))
    if price is not None:
        fields["price"] = price
    return {k: fields[k] for k in AMAZON_FIELDS if k in fields}


def load_amazon2014(cfg: DataConfig) -> Dataset:
    directory = Path(cfg.path).expanduser()
    reviews_name, meta_name = f"reviews_{cfg.category}_5.json.gz", f"meta_{cfg.category}.json.gz"
    what = f"{reviews_name} and {meta_name}, or data.category=<category>"
    reviews_path = _find(directory, [reviews_name], what)
    meta_path = _find(directory, [meta_name], what)
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    for lineno, line in _read_lines(reviews_path):
        if not line.strip():
            continue
        obj = json_line(reviews_path, lineno, line)
        _require_keys(obj, ("reviewerID", "asin", "unixReviewTime"), reviews_path, lineno)
        time = obj["unixReviewTime"]
        if not isinstance(time, int) or isinstance(time, bool):
            raise GenrecError(f"{reviews_path} line {lineno}: unixReviewTime {time!r} is not an integer; "
                              "fix or re-download the file")
        users.append(str(obj["reviewerID"]))
        items.append(str(obj["asin"]))
        times.append(time)
    user_ids, item_ids, sequences, timestamps = index_interactions(
        users, items, np.array(times, dtype=np.int64), min_interactions=cfg.min_interactions, source=reviews_path,
        keep_repeats=cfg.keep_repeats)
    item_index = {asin: i for i, asin in enumerate(item_ids)}
    fields: list[dict[str, Any] | None] = [None] * len(item_ids)
    for lineno, line in _read_lines(meta_path):
        if not line.strip():
            continue
        obj = _meta_line(meta_path, lineno, line)
        index = item_index.get(str(obj.get("asin")))
        if index is not None and fields[index] is None:  # the first line of a repeated asin wins
            fields[index] = _amazon_fields(obj)
    missing = sum(f is None for f in fields)
    if missing:
        logger.warning("%d of %d items have no line in %s; their text fields are empty", missing, len(fields),
                       meta_path)
    return Dataset(item_ids=item_ids, items=[f or {} for f in fields], user_ids=user_ids, sequences=sequences,
                   timestamps=timestamps)
