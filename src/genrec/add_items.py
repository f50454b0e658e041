"""`genrec add-items`: put new items into a trained run's model, with no retraining, so that recommending can
return them from then on. It reads a file of new items with their text, gives each a semantic ID the way the run
would have (`ids/new_items.py`), extends the model's catalogue and trie (`models/extend.py`), and writes a new,
self-contained model directory; the run directory is left as it was. Adding again to that directory (`--model`)
adds to the catalogue it already extended.

    genrec add-items -c configs/beauty.yaml --items new_items.jsonl --out models/beauty-plus
    genrec recommend -c configs/beauty.yaml --model models/beauty-plus --history B004756YJA
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from genrec.config import Config
from genrec.data.prepare import load_prepared
from genrec.errors import GenrecError
from genrec.ids.catalog import Catalog
from genrec.ids.collab import unit_rows
from genrec.ids.new_items import (
    check_embed_model,
    embed_new_items,
    encode_new_items,
    quantizer_inputs,
    read_new_items,
    with_collision_level,
)
from genrec.models.checkpoint import load_items, load_model, save_model
from genrec.models.extend import extend_catalog
from genrec.pipeline import is_current
from genrec.rundir import RunDir
from genrec.workspace import load_sids

logger = logging.getLogger(__name__)


def add_items(cfg: Config, items_path: Path, out: Path, model_dir: Path | None = None) -> dict[str, Any]:
    """Write to `out` the run's model (or the one in `model_dir`) with the items of `items_path` added; returns a
    summary (counts, and each new item's semantic ID)."""
    run, out = RunDir(cfg.run_dir), Path(out)
    model_dir = Path(model_dir) if model_dir is not None else run.model
    if out.exists():
        raise GenrecError(f"{out} already exists; pass a new --out directory (the model there is not replaced)")
    if not run.stamp("quantize").is_file():
        raise GenrecError(f"{run.root} has no semantic IDs (quantize/ is missing); train the run first with "
                          f"'genrec run'")
    model = load_model(model_dir)
    if not model.uses_sids:
        raise GenrecError(f"the model in {model_dir} is a {model.kind}, which ranks item IDs it was trained on; "
                          f"add-items places new items by semantic IDs, which a generative model (tiger) has")
    items = load_items(model_dir)
    dataset = load_prepared(run.prepared)
    N = len(dataset.item_ids)
    run_sids = load_sids(run, N, cfg.quantize.codebook_size)
    if items is None or items[0][:N] != dataset.item_ids or \
            not np.array_equal(model.item_codes[:N].cpu().numpy(), run_sids):
        raise GenrecError(f"the model in {model_dir} ranks other items or semantic IDs than the run {run.root} "
                          f"(the run was quantized again since, or the model is another run's); retrain it with "
                          f"'genrec train --force' or pass the run it came from")
    check_embed_model(cfg, run)
    for stage in ("prepare", "embed", "collab", "quantize"):  # new items are placed as the run placed its own
        if not is_current(cfg, run, stage):
            raise GenrecError(f"the settings given differ from those the {stage} stage of {run.root} ran with (or "
                              f"that stage was redone since); pass the run's own recipe: -c {run.root}/config.yaml")
    ids, fields = read_new_items(items_path)
    known = set(items[0])
    clash = [i for i in ids if i in known]
    if clash:
        raise GenrecError(f"{items_path}: item {clash[0]} is already in the catalogue"
                          f"{f' (and {len(clash) - 1} more)' if len(clash) > 1 else ''}; new items need new IDs")
    text = embed_new_items(cfg, ids, fields, items_path)  # [M, E]
    codes = encode_new_items(cfg, run, quantizer_inputs(cfg, run, text))  # [M, L]
    sids = with_collision_level(model.item_codes.cpu().numpy(), codes)  # [M, L + 1]
    extended = extend_catalog(model, sids, unit_rows(text))
    titles = items[1] + [str(f.get("title") or "") for f in fields]
    catalog = Catalog(items[0] + ids, [{"title": t} for t in titles], extended.item_codes.numpy(),
                      cfg.quantize.codebook_size)
    save_model(extended, out, catalog=catalog)
    logger.info("added %d items to the %d of %s: %s", len(ids), len(items[0]), model_dir, out)
    return {"model": str(out), "items": len(items[0]) + len(ids), "added": len(ids),
            "semantic_ids": {item: row for item, row in zip(ids, sids.tolist())}}
