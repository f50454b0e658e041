"""The `table` format: your own interactions as CSV or Parquet (a user, an item, optionally a time and a rating
column, named by `data.*_column`) and an optional item table (the item column plus any text columns), read into
a `Dataset` like the other loaders (see `loaders`: sorted by time, repeats dropped unless `data.keep_repeats`, k-core filtered)."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genrec.config import DataConfig
from genrec.data.loaders import Dataset, index_interactions, one_line
from genrec.errors import GenrecError

logger = logging.getLogger(__name__)


def _read_table(path: Path, setting: str, str_columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise GenrecError(f"{path} does not exist; pass {setting}=<path to a CSV or Parquet file>")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            frame = pd.read_parquet(path)
        elif name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
            sep = "\t" if name.endswith((".tsv", ".tsv.gz")) else ","
            frame = pd.read_csv(path, sep=sep, dtype={c: str for c in str_columns}, keep_default_na=True)
        else:
            raise GenrecError(f"{path} has an unknown extension; {setting} must end in .csv, .csv.gz, .tsv, "
                              ".tsv.gz or .parquet")
    except GenrecError:
        raise
    except Exception as err:  # pandas and pyarrow raise many types for unreadable files
        raise GenrecError(f"{path} cannot be read as a table ({one_line(err)}); fix the file") from None
    return frame


def _require_columns(frame: pd.DataFrame, columns: dict[str, str], path: Path) -> None:
    """columns: column name -> the setting that names it."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        settings = ", ".join(f"{columns[c]}=<column>" for c in missing)
        raise GenrecError(f"{path} lacks column(s) {', '.join(missing)} (it has {', '.join(map(str, frame.columns))});"
                          f" name the right ones with {settings}")


def _ids(column: pd.Series, name: str, path: Path) -> list[str]:
    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0])
        raise GenrecError(f"{path} has an empty {name} in data row {row + 1}; fill or drop that row")
    return [str(v) for v in column.tolist()]


def _unix_seconds(column: pd.Series, path: Path) -> np.ndarray:
    """Integer timestamps as they are; anything else through pandas' datetime parser (naive = UTC). A value
    that fits neither is reported with its row."""
    name = column.name
    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0])
        raise GenrecError(f"{path} has an empty {name} in data row {row + 1}; fill or drop that row")
    if pd.api.types.is_integer_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        return column.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(column.dtype):
        return np.floor(column.to_numpy(dtype=np.float64)).astype(np.int64)
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().mean() >= 0.5:  # mostly numbers: the others are the mistakes
        bad = np.flatnonzero(numbers.isna().to_numpy())
        if len(bad) == 0:
            return np.floor(numbers.to_numpy(dtype=np.float64)).astype(np.int64)
        raise GenrecError(f"{path}: column {name} holds unix seconds but data row {bad[0] + 1} has "
                          f"{column.iloc[bad[0]]!r}; fix or drop that row")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(column, utc=True, errors="coerce", format="mixed")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        raise GenrecError(f"{path}: column {name} holds dates but data row {bad[0] + 1} has {column.iloc[bad[0]]!r}, "
                          f"which is not one; use unix seconds or ISO dates")
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def _plain(value: Any) -> Any:
    """A table cell as plain JSON-able Python; None for missing values."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def load_table(cfg: DataConfig) -> Dataset:
    if not cfg.interactions:
        raise GenrecError("data.format=table needs data.interactions=<path to CSV or Parquet>")
    path = Path(cfg.interactions).expanduser()
    user, item, time = cfg.user_column, cfg.item_column, cfg.time_column
    frame = _read_table(path, "data.interactions", (user, item))
    required = {user: "data.user_column", item: "data.item_column"}
    if cfg.rating_column:
        required[cfg.rating_column] = "data.rating_column"
    _require_columns(frame, required, path)
    if cfg.rating_column:
        ratings = pd.to_numeric(frame[cfg.rating_column], errors="coerce")
        if ratings.isna().any():
            row = int(np.flatnonzero(ratings.isna().to_numpy())[0])
            raise GenrecError(f"{path}: column {cfg.rating_column} (data.rating_column) has "
                              f"{frame[cfg.rating_column].iloc[row]!r} in data row {row + 1}, not a number; fix it")
        kept = (ratings >= cfg.min_rating).to_numpy()
        logger.info("data.min_rating=%g keeps %d of %d interactions", cfg.min_rating, int(kept.sum()), len(kept))
        frame = frame[kept]
    times = _unix_seconds(frame[time], path) if time in frame.columns else None
    user_ids, item_ids, sequences, timestamps = index_interactions(
        _ids(frame[user], user, path), _ids(frame[item], item, path), times,
        min_interactions=cfg.min_interactions, source=path, keep_repeats=cfg.keep_repeats)
    fields: list[dict[str, Any]] = [{} for _ in item_ids]
    if cfg.items:
        fields = _item_fields(cfg, Path(cfg.items).expanduser(), item_ids)
    return Dataset(item_ids=item_ids, items=fields, user_ids=user_ids, sequences=sequences, timestamps=timestamps)


def _item_fields(cfg: DataConfig, path: Path, item_ids: list[str]) -> list[dict[str, Any]]:
    """Each item's text fields from the items file: every column but the item ID column."""
    candidates = [c for c in dict.fromkeys((cfg.item_column, "item", "item_id"))]
    table = _read_table(path, "data.items", tuple(candidates))
    key = next((c for c in candidates if c in table.columns), None)
    if key is None:
        raise GenrecError(f"{path} has no item ID column ({' or '.join(candidates)}; it has "
                          f"{', '.join(map(str, table.columns))}); name it with data.item_column=<column>")
    names = _ids(table[key], key, path)
    repeated = pd.Series(names).duplicated()
    if repeated.any():
        raise GenrecError(f"{path} lists item {names[int(np.flatnonzero(repeated)[0])]} more than once; "
                          "keep one row per item")
    index = {item: i for i, item in enumerate(item_ids)}
    columns = [str(c) for c in table.columns if c != key]
    fields: list[dict[str, Any]] = [{} for _ in item_ids]
    for name, row in zip(names, table.drop(columns=[key]).itertuples(index=False, name=None)):
        if name in index:
            values = {c: _plain(v) for c, v in zip(columns, row)}
            fields[index[name]] = {c: v for c, v in values.items() if v is not None}
    missing = len(item_ids) - sum(name in index for name in names)
    if missing:
        logger.warning("%d of %d items have no row in %s; their text fields are empty", missing, len(item_ids), path)
    return fields
