"""Model directories in the Hugging Face layout, and the Hugging Face conventions for every genrec model:
`Model.from_pretrained(path or hub repo)`, `model.save_pretrained(directory)` and `model.push_to_hub(repo_id)`,
so a directory can be shared on a model hub as it is.

    <dir>/config.json         the model's kind and section, its shape (`checkpoint_meta`), the catalogue fingerprint
    <dir>/model.safetensors   weights (a generative model's include the catalogue's semantic IDs, `item_codes`)
    <dir>/items.jsonl         the external ID and title of each catalogue row the model ranks

    from genrec.models.tiger import Tiger
    model = Tiger.from_pretrained("runs/beauty/train/best")
    model.save_pretrained("exported/beauty-tiger")
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from genrec.config import ModelConfig, from_dict
from genrec.errors import GenrecError
from genrec.files import replace_dir

ITEMS = "items.jsonl"


def write_model_dir(model: nn.Module, directory: Path, config: dict[str, Any],
                    items: tuple[list[str], list[str]] | None, extra_state: dict[str, Any] | None = None) -> None:
    """config.json, model.safetensors, items.jsonl (when known) and trainer_state.pt (when given), written under a
    temporary name and renamed into place, so a killed process never leaves a half-written directory."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if items is not None:
        rows = ({"item_id": item, "title": title} for item, title in zip(*items))
        (tmp / ITEMS).write_text("".join(json.dumps(row) + "\n" for row in rows))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    if extra_state is not None:
        torch.save(extra_state, tmp / "trainer_state.pt")
    replace_dir(tmp, directory)


def load_items(directory: Path) -> tuple[list[str], list[str]] | None:
    """(external item IDs, titles) of the catalogue rows a model directory ranks; None for a directory written
    before models carried them."""
    path = Path(directory) / ITEMS
    if not path.exists():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [str(r["item_id"]) for r in rows], [str(r.get("title") or "") for r in rows]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise GenrecError(f"{path} is corrupt ({err}); retrain with 'genrec train --force'")


def read_model_dir(directory: Path, classes: dict[str, Any], *, map_location: str = "cpu",
                   remake: str = "genrec train --force") -> nn.Module:
    """Rebuild the model of a model directory, its kind one of `classes` (kind -> model class), without touching
    the global RNG. `remake`: the command that makes this directory again, named in the errors."""
    try:
        config = json.loads((directory / "config.json").read_text())
        state = load_file(str(directory / "model.safetensors"), device=map_location)
    except FileNotFoundError as err:
        raise GenrecError(f"{directory} is not a genrec model directory ({Path(err.filename).name} is missing); "
                          f"train one with 'genrec train' or point to runs/<name>/train/best")
    except (json.JSONDecodeError, OSError, ValueError, SafetensorError) as err:
        raise GenrecError(f"{directory} holds a corrupt model ({err}); retrain with '{remake}'")
    kind = config.get("kind")
    if kind not in classes or "meta" not in config:
        raise GenrecError(f"{directory}/config.json does not name a model kind expected here ({kind!r}; expected: "
                          f"{', '.join(classes)}); load it with genrec.Recommender.load, or retrain with '{remake}'")
    section_cls = type(getattr(ModelConfig(), kind))
    config["model"].setdefault("repeat_bias", False)  # saved before the option existed: trained without one
    if kind == "tiger":  # saved before the hybrid existed: no text input, no dense head
        config["model"].setdefault("text_input", False), config["model"].setdefault("dense_weight", 0.0)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's RNG as it was
        model = classes[kind].from_checkpoint(from_dict(section_cls, config["model"]), config["meta"])
    model.load_state_dict(state)
    model.__dict__["_pretrained"] = {"config": config, "items": load_items(directory)}  # for save_pretrained
    return model.eval()


class Pretrained:
    kind: str = ""  # the model's name in config.json and `model.kind`
    methods: tuple[str, ...] = ()

    @classmethod
    def offered_methods(cls, section: Any) -> tuple[str, ...]:
        """The ranking methods a model of this config section offers (its class's `methods` unless it says)."""
        return cls.methods

    @property
    def default_methods(self) -> tuple[str, ...]:
        """The ranking methods evaluated when `evaluate.methods` is empty; the first is the one `recommend` and the
        service use unless told. (Training selects on `methods[0]`.)"""
        return tuple(self.methods[:1])

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str = "cpu", revision: str | None = None) -> Any:
        """A model from a local model directory, or from a hub repository (downloaded once into the cache)."""
        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            from huggingface_hub import snapshot_download

            try:
                path = Path(snapshot_download(str(name_or_path), revision=revision))
            except Exception as err:  # the hub client raises many types (offline, not found, bad name)
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise GenrecError(f"{name_or_path} is not a model directory and cannot be fetched from the model "
                                  f"hub ({reason}); pass a directory such as runs/<name>/train/best") from None
        try:
            kind = json.loads((path / "config.json").read_text()).get("kind")
        except (OSError, ValueError):
            kind = None
        if kind is not None and kind != cls.kind:
            raise GenrecError(f"{path} holds a {kind} model, not a {cls.__name__}; load it with "
                              f"genrec.Recommender.load or that model's class")
        return read_model_dir(path, {cls.kind: cls}, map_location=device)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write this model, loaded from a model directory, to another: config, current weights, its items."""
        source = self.__dict__.get("_pretrained")
        if source is None:
            raise GenrecError("this model was not loaded from a model directory, so it does not know its "
                              "catalogue; save it with genrec.models.checkpoint.save_model(model, directory, "
                              "catalog=...)")
        write_model_dir(self, Path(directory), source["config"], source["items"])  # type: ignore[arg-type]

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None) -> str:
        """Upload this model's directory to a hub repository (created if needed); returns the commit URL."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(Path(tmp) / "model")
            api.create_repo(repo_id, exist_ok=True, private=private)
            return str(api.upload_folder(repo_id=repo_id, folder_path=str(Path(tmp) / "model")))
