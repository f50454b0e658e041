"""The `table` format: your own interactions as CSV or Parquet (`user`, `item`, optional `timestamp`) and an
optional item table (`item` plus any text columns), read into a `Dataset` like the other loaders (see
`loaders`: sorted by time, repeats dropped, k-core filtered)."""

from __future__ import annotations

import logging
import math
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


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise GenrecError(f"{path} lacks column(s) {', '.join(missing)} (it has {', '.join(map(str, frame.columns))});"
                          f" rename the columns to {', '.join(columns)}")


def _ids(column: pd.Series, name: str, path: Path) -> list[str]:
    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0])
        raise GenrecError(f"{path} has an empty {name} in data row {row + 1}; fill or drop that row")
    return [str(v) for v in column.tolist()]


def _unix_seconds(column: pd.Series, path: Path) -> np.ndarray:
    """Integer timestamps as they are; anything else through pandas' datetime parser (naive = UTC)."""
    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0])
        raise GenrecError(f"{path} has an empty timestamp in data row {row + 1}; fill or drop that row")
    if pd.api.types.is_integer_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        return column.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(column.dtype):
        return np.floor(column.to_numpy(dtype=np.float64)).astype(np.int64)
    try:
        try:
            parsed = pd.to_datetime(column, utc=True)
        except (ValueError, TypeError):  # a mix of formats: parse each value on its own
            parsed = pd.to_datetime(column, utc=True, format="mixed")
    except (ValueError, TypeError) as err:
        raise GenrecError(f"{path}: column timestamp is neither integers nor dates ({one_line(err)}); "
                          "use unix seconds or ISO dates") from None
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
    frame = _read_table(path, "data.interactions", ("user", "item"))
    _require_columns(frame, ("user", "item"), path)
    times = _unix_seconds(frame["timestamp"], path) if "timestamp" in frame.columns else None
    user_ids, item_ids, sequences, timestamps = index_interactions(
        _ids(frame["user"], "user", path), _ids(frame["item"], "item", path), times,
        min_interactions=cfg.min_interactions, source=path)
    fields: list[dict[str, Any]] = [{} for _ in item_ids]
    if cfg.items:
        items_path = Path(cfg.items).expanduser()
        table = _read_table(items_path, "data.items", ("item",))
        _require_columns(table, ("item",), items_path)
        if "item_id" in table.columns:
            raise GenrecError(f"{items_path} has a column item_id, a name genrec reserves; rename it")
        names = _ids(table["item"], "item", items_path)
        repeated = pd.Series(names).duplicated()
        if repeated.any():
            raise GenrecError(f"{items_path} lists item {names[int(np.flatnonzero(repeated)[0])]} more than once; "
                              "keep one row per item")
        index = {item: i for i, item in enumerate(item_ids)}
        columns = [str(c) for c in table.columns if c != "item"]
        rows = table.drop(columns=["item"]).itertuples(index=False, name=None)
        for name, row in zip(names, rows):
            if name in index:
                values = {c: _plain(v) for c, v in zip(columns, row)}
                fields[index[name]] = {c: v for c, v in values.items() if v is not None}
        missing = len(item_ids) - sum(name in index for name in names)
        if missing:
            logger.warning("%d of %d items have no row in %s; their text fields are empty", missing,
                           len(item_ids), items_path)
    return Dataset(item_ids=item_ids, items=fields, user_ids=user_ids, sequences=sequences, timestamps=timestamps)
