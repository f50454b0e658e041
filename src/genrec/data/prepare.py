"""The `prepare` stage: load the raw data once and write it as plain artifacts the later stages read.

Artifacts (in the stage's output directory):

- `items.jsonl`: line i describes item index i: `{"item_id": <external id>, <field>: <value>, ...}`.
- `sequences.npz`: int64 arrays `offsets` [U + 1] and `items` [total]; user u's items, oldest first, are
  `items[offsets[u]:offsets[u + 1]]`. `timestamps` [total] (unix seconds) is present only when the source had
  times.
- `users.json`: the list of external user ids, index = user index.
- `stats.json`: the numbers from `dataset_stats`, written last (its presence marks a complete stage).

`load_prepared(dir)` reads them back into the exact `Dataset` that `prepare` wrote.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from genrec.config import DataConfig
from genrec.data.loaders import Dataset, load_amazon2014, load_p5
from genrec.data.splits import Split, make_split
from genrec.data.table import load_table
from genrec.errors import GenrecError
from genrec.files import write_bytes

logger = logging.getLogger(__name__)

ITEMS_FILE = "items.jsonl"
SEQUENCES_FILE = "sequences.npz"
USERS_FILE = "users.json"
STATS_FILE = "stats.json"
FILES = (ITEMS_FILE, SEQUENCES_FILE, USERS_FILE, STATS_FILE)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load the data described by `cfg` (dispatch on `cfg.format`)."""
    loaders = {"p5": load_p5, "amazon2014": load_amazon2014, "table": load_table}
    if cfg.format not in loaders:
        raise GenrecError(f"data.format={cfg.format!r} is not one of {', '.join(loaders)}")
    dataset = loaders[cfg.format](cfg)
    logger.info("loaded %s data: %d users, %d items, %d interactions", cfg.format, dataset.num_users,
                dataset.num_items, dataset.num_interactions)
    return dataset


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {name: 0.0 for name in ("min", "p25", "median", "mean", "p75", "p90", "p99", "max")}
    p25, median, p75, p90, p99 = np.percentile(values, [25, 50, 75, 90, 99])
    return {"min": float(values.min()), "p25": float(p25), "median": float(median), "mean": float(values.mean()),
            "p75": float(p75), "p90": float(p90), "p99": float(p99), "max": float(values.max())}


def dataset_stats(dataset: Dataset, split: Split, *, split_name: str = "") -> dict[str, Any]:
    """Size, density, sequence-length distribution, item frequencies and evaluation-set sizes (a flat dict)."""
    lengths = np.array([len(s) for s in dataset.sequences], dtype=np.int64)
    users, items, interactions = dataset.num_users, dataset.num_items, int(lengths.sum())
    flat = np.concatenate(dataset.sequences + [np.zeros(0, np.int64)]).astype(np.int64)
    freq = np.bincount(flat, minlength=items)
    stats: dict[str, Any] = {"users": users, "items": items, "interactions": interactions,
                             "density": interactions / (users * items) if users and items else 0.0}
    stats.update({f"seq_len_{k}": v for k, v in _percentiles(lengths).items()})
    stats.update({"item_freq_min": int(freq.min()) if items else 0, "item_freq_max": int(freq.max()) if items else 0,
                  "split": split_name, "valid_users": len(split.valid.users), "test_users": len(split.test.users),
                  "valid_dropped_users": users - len(split.valid.users),
                  "test_dropped_users": users - len(split.test.users),
                  "train_interactions": int(sum(len(s) for s in split.train)),
                  "has_timestamps": dataset.timestamps is not None})
    return stats


def _format_stats(stats: dict[str, Any]) -> str:
    width = max(len(k) for k in stats)
    rows = []
    for key, value in stats.items():
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        rows.append(f"  {key:<{width}}  {text}")
    return "\n".join(["dataset statistics:"] + rows)


def prepare(cfg: DataConfig, out_dir: Path) -> dict[str, Any]:
    """Load the data of `cfg`, write the artifacts into `out_dir` and return (and log) its statistics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(cfg)
    split = make_split(dataset, cfg)
    stats = dataset_stats(dataset, split, split_name=cfg.split)

    lines = []
    for item_id, fields in zip(dataset.item_ids, dataset.items):
        if "item_id" in fields:
            raise GenrecError(f"item {item_id} has a text field named item_id, a name genrec reserves; rename it")
        lines.append(json.dumps({"item_id": item_id, **fields}, ensure_ascii=False) + "\n")
    write_bytes(out_dir / ITEMS_FILE, "".join(lines).encode("utf-8"))

    lengths = np.array([len(s) for s in dataset.sequences], dtype=np.int64)
    arrays = {"offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
              "items": np.concatenate(dataset.sequences + [np.zeros(0, np.int64)]).astype(np.int64)}
    if dataset.timestamps is not None:
        arrays["timestamps"] = np.concatenate(dataset.timestamps + [np.zeros(0, np.int64)]).astype(np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(out_dir / SEQUENCES_FILE, buffer.getvalue())
    write_bytes(out_dir / USERS_FILE, json.dumps(dataset.user_ids, ensure_ascii=False).encode("utf-8"))
    write_bytes(out_dir / STATS_FILE, (json.dumps(stats, indent=2) + "\n").encode("utf-8"))
    logger.info("%s", _format_stats(stats))
    return stats


def _corrupt(path: Path, why: str) -> GenrecError:
    return GenrecError(f"{path} {why}; rerun 'genrec prepare' (or pass --force)")


def load_prepared(dir: Path) -> Dataset:
    """Read the artifacts written by `prepare` back into the same `Dataset`."""
    directory = Path(dir)
    for name in FILES:
        if not (directory / name).is_file():
            raise _corrupt(directory / name, "is missing")
    path = directory / USERS_FILE
    try:
        user_ids = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise _corrupt(path, f"is not valid JSON ({type(err).__name__})") from None
    if not isinstance(user_ids, list) or not all(isinstance(u, str) for u in user_ids):
        raise _corrupt(path, "is not a list of user ids")

    path = directory / ITEMS_FILE
    item_ids: list[str] = []
    items: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise _corrupt(path, f"line {lineno} is not valid JSON") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("item_id"), str):
                    raise _corrupt(path, f"line {lineno} is not an object with a string item_id")
                item_ids.append(obj.pop("item_id"))
                items.append(obj)
    except (OSError, UnicodeDecodeError) as err:
        raise _corrupt(path, f"cannot be read ({type(err).__name__})") from None

    path = directory / SEQUENCES_FILE
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise _corrupt(path, f"cannot be read ({type(err).__name__})") from None
    for name in ("offsets", "items"):
        if name not in arrays or arrays[name].dtype != np.int64 or arrays[name].ndim != 1:
            raise _corrupt(path, f"lacks an int64 array {name}")
    offsets, flat = arrays["offsets"], arrays["items"]
    if (len(offsets) != len(user_ids) + 1 or offsets[0] != 0 or offsets[-1] != len(flat)
            or np.any(np.diff(offsets) < 0)):
        raise _corrupt(path, f"has offsets that do not match {len(user_ids)} users and {len(flat)} items")
    if len(flat) and (flat.min() < 0 or flat.max() >= len(item_ids)):
        raise _corrupt(path, f"refers to items outside the {len(item_ids)} of {ITEMS_FILE}")
    times = arrays.get("timestamps")
    if times is not None and (times.dtype != np.int64 or times.shape != flat.shape):
        raise _corrupt(path, "has timestamps that do not match its items")
    if not user_ids:
        return Dataset(item_ids=item_ids, items=items, user_ids=[], sequences=[],
                       timestamps=None if times is None else [])
    bounds = offsets[1:-1]
    return Dataset(item_ids=item_ids, items=items, user_ids=user_ids, sequences=np.split(flat, bounds),
                   timestamps=None if times is None else np.split(times, bounds))
