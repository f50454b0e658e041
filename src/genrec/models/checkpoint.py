"""Model directories and resumable training checkpoints, in the Hugging Face layout.

    <dir>/config.json         the model's kind and section, its shape (`checkpoint_meta`), the catalogue fingerprint
    <dir>/model.safetensors   weights (a generative model's include the catalogue's semantic IDs, `item_codes`)
    <dir>/items.jsonl         the external ID and title of each catalogue row the model ranks, so that a model
                              directory recommends on its own
    <dir>/trainer_state.pt    (checkpoints only) optimizer, scheduler, step, data cursor, RNG states

A directory is written under a temporary name and renamed into place, so a killed process never leaves a
half-written one behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genrec.config import to_dict
from genrec.errors import GenrecError
from genrec.ids.catalog import Catalog
from genrec.models.pretrained import ITEMS, load_items, read_model_dir, write_model_dir
from genrec.models.registry import MODELS

__all__ = ["ITEMS", "check_catalog", "load_items", "load_model", "save_model"]


def save_model(model: nn.Module, directory: Path, *, catalog: Catalog,
               extra_state: dict[str, Any] | None = None) -> None:
    """Write config.json + model.safetensors + items.jsonl (+ trainer_state.pt when extra_state is given)
    atomically."""
    config = {"kind": model.kind, "model": to_dict(model.cfg), "meta": model.checkpoint_meta(),
              "uses_sids": model.uses_sids, "catalog": catalog.fingerprint(with_sids=model.uses_sids)}
    titles = [str(fields.get("title") or "") for fields in catalog.items]
    write_model_dir(model, Path(directory), config, (catalog.item_ids, titles), extra_state)


def load_model(directory: Path, map_location: str = "cpu", *, remake: str = "genrec train --force") -> nn.Module:
    """Rebuild a model (any kind) from a model directory written by save_model, without touching the global RNG
    (a resumed run that loads a model after restoring its RNG state must draw what the uninterrupted run drew).
    `remake`: the command that makes this directory again, named in the errors."""
    return read_model_dir(Path(directory), MODELS, map_location=map_location, remake=remake)


def check_catalog(directory: Path, catalog: Catalog, *, remake: str = "genrec train --force") -> None:
    """Fail if the model at `directory` was trained on other items (or, for a generative model, other semantic
    IDs) than `catalog`'s."""
    config = json.loads((Path(directory) / "config.json").read_text())
    current = catalog.fingerprint(with_sids=config["uses_sids"])
    if config["catalog"] != current:
        what = "semantic IDs" if config["uses_sids"] else "items"
        raise GenrecError(
            f"the model in {directory} was trained on a different catalogue ({config['meta']['num_items']} items, "
            f"fingerprint {config['catalog']}) than the current {what} ({catalog.num_items} items, fingerprint "
            f"{current}); retrain with '{remake}'")


def rng_state() -> dict[str, Any]:
    """Torch's RNG (dropout). Data order needs none: it is a pure function of (seed, epoch)."""
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint-<step> directory with the largest step, or None."""
    found = [(int(p.name.split("-")[1]), p) for p in Path(directory).glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and (p / "trainer_state.pt").exists()]
    return max(found)[1] if found else None


def load_trainer_state(directory: Path) -> dict[str, Any]:
    return torch.load(Path(directory) / "trainer_state.pt", weights_only=True)
