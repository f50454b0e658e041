"""Semantic IDs for items added to a trained run, with nothing refitted: the run's text encoder embeds their text,
their collaborative vector (when the run's IDs come from one) is the mean of their nearest trained items' by
text, as the collab stage does for items seen too rarely, the run's fitted quantizer encodes it, and the collision
level gives each one the first suffix its code prefix does not use yet, so every ID stays unique and no old item's
ID changes.

A new-items file is JSONL (one object per line) or a CSV / Parquet table, with an `item_id` (or `item`) field and
any text fields (title, brand, categories, ...), read through the run's `embed.template`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from genrec.config import Config
from genrec.data.loaders import json_line
from genrec.data.prepare import load_prepared
from genrec.data.splits import make_split
from genrec.errors import GenrecError
from genrec.ids.collab import borrow_from_text_neighbours, item_counts, unit_rows
from genrec.ids.embed import _encode, item_text, load_encoder, resolve_template
from genrec.ids.quantize import load_embeddings, load_quantizer
from genrec.rundir import RAW_EMBEDDINGS, RunDir

ID_FIELDS = ("item_id", "item")


def read_new_items(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(item IDs, text fields) of a new-items file; GenrecError naming the file and row for a bad one."""
    path = Path(path)
    if not path.is_file():
        raise GenrecError(f"{path} does not exist; pass --items <JSONL, CSV or Parquet file of new items>")
    rows: list[dict[str, Any]] = []
    if path.name.lower().endswith((".jsonl", ".json")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise GenrecError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
        rows = [json_line(path, n, line, "write one JSON object per item and line")
                for n, line in enumerate(lines, start=1) if line.strip()]
    else:
        from genrec.data.table import _plain, _read_table

        frame = _read_table(path, "--items", ID_FIELDS)
        rows = [{str(c): _plain(v) for c, v in zip(frame.columns, values)}
                for values in frame.itertuples(index=False, name=None)]
    if not rows:
        raise GenrecError(f"{path} lists no items; write one item per line (JSONL) or row (CSV)")
    ids, fields = [], []
    for n, row in enumerate(rows, start=1):
        key = next((k for k in ID_FIELDS if row.get(k) not in (None, "")), None)
        if key is None:
            raise GenrecError(f"{path} item {n} has no item_id; give every item an item_id field or column")
        ids.append(str(row[key]))
        fields.append({k: v for k, v in row.items() if k not in ID_FIELDS and v is not None})
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise GenrecError(f"{path} lists item {item} more than once; keep one row per new item")
        seen.add(item)
    return ids, fields


def check_embed_model(cfg: Config, run: RunDir) -> None:
    """The new items must be embedded by the encoder that embedded the run's items."""
    stats = run.stage("embed") / "embedding_stats.json"
    used = json.loads(stats.read_text()).get("model") if stats.is_file() else None
    if used is None:
        raise GenrecError(f"{run.root} has no text embeddings (its embed stage did not run or its items have no "
                          f"text), so new items cannot be placed by their text; run 'genrec embed' first")
    if used != cfg.embed.model:
        raise GenrecError(f"the run's items were embedded with embed.model={used}, not {cfg.embed.model}; new items "
                          f"must be embedded by the same encoder: drop the override or set embed.model={used}")


def embed_new_items(cfg: Config, item_ids: list[str], fields: list[dict[str, Any]], source: Path) -> np.ndarray:
    """Text embeddings [M, E] of the new items with the run's encoder and template (not normalised)."""
    template = resolve_template(cfg.embed.template, cfg.data.format)
    texts = []
    for item, f in zip(item_ids, fields):
        text = item_text(f, template, cfg.embed.max_chars)
        if not text:
            raise GenrecError(f"{source}: new item {item} has no text (none of its fields has a value); give it a "
                              f"title or other text fields, by which it is placed among the trained items")
        texts.append(text)
    vectors = _encode(load_encoder(cfg.embed.model, cfg.embed.device), texts, cfg.embed.batch_size)  # [M, E]
    if not np.isfinite(vectors).all() or (np.linalg.norm(vectors, axis=1) == 0).any():
        raise GenrecError(f"encoder {cfg.embed.model!r} returned non-finite or all-zero vectors for {source}")
    return vectors.astype(np.float32)


def quantizer_inputs(cfg: Config, run: RunDir, text: np.ndarray) -> np.ndarray:
    """What the run's quantizer reads (`quantize.inputs`), for new items with text embeddings `text` [M, E] (not
    normalised): their text vectors, and/or their collaborative vectors borrowed from their nearest trained items
    by text, centred and normalised as the collab stage did for the catalogue's."""
    inputs = cfg.quantize.inputs if cfg.quantize.inputs != "auto" else ("collab" if cfg.collab.enabled else "text")
    parts = []
    if "text" in inputs:
        parts.append(unit_rows(text) if cfg.quantize.normalize else text)
    if "collab" in inputs:
        raw = np.load(run.stage("collab") / RAW_EMBEDDINGS)  # [N, D] the catalogue's rows
        catalog_text = load_embeddings(run.stage("embed"), normalize=True)  # [N, E]
        dataset = load_prepared(run.prepared)
        warm = item_counts(make_split(dataset, cfg.data).train, dataset.num_items) >= cfg.collab.min_item_count
        rows = np.concatenate([raw, np.zeros((len(text), raw.shape[1]), dtype=raw.dtype)])  # new rows: to borrow
        cold = np.concatenate([~warm, np.ones(len(text), dtype=bool)])  # neighbours are trained items only
        borrowed = borrow_from_text_neighbours(rows, np.concatenate([catalog_text, unit_rows(text)]), cold,
                                               cfg.collab.text_neighbours)[len(raw) :]
        parts.append(unit_rows(borrowed - raw.mean(0, keepdims=True)) if cfg.quantize.normalize
                     else borrowed.astype(np.float32))  # as the collab stage wrote the catalogue's
    if len(parts) == 1:
        return parts[0]
    return np.ascontiguousarray(np.concatenate([unit_rows(p) for p in parts], axis=1))


def encode_new_items(cfg: Config, run: RunDir, vectors: np.ndarray) -> np.ndarray:
    """Codes [M, L] of the run's fitted quantizer for the new items' quantizer inputs [M, D]."""
    return load_quantizer(cfg.quantize, run.stage("quantize")).encode(vectors)


def with_collision_level(sids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The catalogue's semantic IDs [N, L + 1] and new items' codes [M, L] -> the new items' IDs [M, L + 1], each
    with the smallest collision code that no item (old or new before it) with the same L codes has."""
    used: dict[tuple[int, ...], set[int]] = {}
    for row in sids.tolist():
        used.setdefault(tuple(row[:-1]), set()).add(row[-1])
    out = []
    for row in codes.tolist():
        taken = used.setdefault(tuple(row), set())
        suffix = next(s for s in range(len(taken) + 1) if s not in taken)
        taken.add(suffix)
        out.append([*row, suffix])
    return np.array(out, dtype=np.int64).reshape(len(out), sids.shape[1])
