"""The model kinds, chosen by `model.kind`: a plain dict from the kind to its class, which reads its own config
section (`model.<kind>`). Adding a model adds a file and a line here, never a branch in the trainer or the
evaluator."""

from __future__ import annotations

from typing import Any

from torch import nn

from genrec.config import ModelConfig
from genrec.ids.catalog import Catalog
from genrec.models.sasrec import SASRec
from genrec.models.tiger import Tiger

MODELS: dict[str, type[nn.Module]] = {"tiger": Tiger, "sasrec": SASRec}


def build_model(cfg: ModelConfig, *, catalog: Catalog, max_history: int) -> nn.Module:
    """A fresh model of kind `cfg.kind` over `catalog`."""
    return MODELS[cfg.kind].from_catalog(cfg.section, catalog=catalog, max_history=max_history)


def model_from_checkpoint(kind: str, section: Any, meta: dict[str, Any]) -> nn.Module:
    """An untrained model of a saved shape, ready for its state dict."""
    return MODELS[kind].from_checkpoint(section, meta)
