"""Model directories and resumable training checkpoints, in the Hugging Face layout.

    <dir>/config.json         the model section, level sizes, history length, catalogue size and fingerprint
    <dir>/model.safetensors   weights, including the catalogue's semantic IDs (`item_codes`)
    <dir>/trainer_state.pt    (checkpoints only) optimizer, scheduler, step, data cursor, RNG states

A directory is written under a temporary name and renamed into place, so a killed process never leaves a
half-written one behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from genrec.config import ModelConfig, from_dict, to_dict
from genrec.errors import GenrecError


def catalog_fingerprint(item_codes: np.ndarray | torch.Tensor) -> str:
    codes = np.ascontiguousarray(np.asarray(item_codes, dtype=np.int64))
    return hashlib.sha256(codes.tobytes() + str(codes.shape).encode()).hexdigest()[:16]


def replace_dir(tmp: Path, final: Path) -> None:
    """Atomically put directory `tmp` at `final`, replacing what was there."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def save_model(model: nn.Module, directory: Path, extra_state: dict[str, Any] | None = None) -> None:
    """Write config.json + model.safetensors (+ trainer_state.pt when extra_state is given) atomically."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    config = {"model": to_dict(model.cfg), "level_sizes": model.level_sizes, "max_history": model.max_history,
              "num_items": int(model.item_codes.shape[0]), "catalog": catalog_fingerprint(model.item_codes)}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    if extra_state is not None:
        torch.save(extra_state, tmp / "trainer_state.pt")
    replace_dir(tmp, directory)


def load_model(directory: Path, map_location: str = "cpu") -> nn.Module:
    """Rebuild a model (any kind) from a model directory written by save_model, without touching the global RNG
    (a resumed run that loads a model after restoring its RNG state must draw what the uninterrupted run drew)."""
    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text())
        state = load_file(str(directory / "model.safetensors"), device=map_location)
    except FileNotFoundError as err:
        raise GenrecError(f"{directory} is not a genrec model directory ({Path(err.filename).name} is missing); "
                          f"train one with 'genrec train' or point to runs/<name>/train/best")
    except (json.JSONDecodeError, OSError, ValueError) as err:
        raise GenrecError(f"{directory} holds a corrupt model ({err}); retrain with 'genrec train --force'")
    from genrec.models import build_model

    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's RNG as it was
        model = build_model(from_dict(ModelConfig, config["model"]), item_codes=state["item_codes"],
                            level_sizes=config["level_sizes"], max_history=config["max_history"])
    model.load_state_dict(state)
    return model.eval()


def check_catalog(directory: Path, item_codes: np.ndarray) -> None:
    """Fail if the model at `directory` was trained on other semantic IDs than `item_codes`."""
    config = json.loads((Path(directory) / "config.json").read_text())
    if config["catalog"] != catalog_fingerprint(item_codes):
        raise GenrecError(
            f"the model in {directory} was trained on a different catalogue ({config['num_items']} items, "
            f"fingerprint {config['catalog']}) than the current semantic IDs ({len(item_codes)} items, "
            f"fingerprint {catalog_fingerprint(item_codes)}); retrain with 'genrec train --force'")


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
