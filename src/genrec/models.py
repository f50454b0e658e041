"""The model kinds, chosen by `model.kind`. Each speaks one interface, so the trainer and the evaluator never
branch on the type: `forward(batch) -> Output(loss=...)`, `recommend(batch, k) -> (items [B, k], scores [B, k])`,
plus `method` (its metric key), `complete_ranking` (whether it can return any k) and `all_positions` (whether it
trains on whole sequences with a target at every position)."""

from __future__ import annotations

from torch import Tensor, nn

from genrec.config import ModelConfig
from genrec.sasrec import SASRec
from genrec.tiger import Tiger

MODELS: dict[str, type[nn.Module]] = {"tiger": Tiger, "sasrec": SASRec}


def build_model(cfg: ModelConfig, *, item_codes: Tensor, level_sizes: list[int], max_history: int) -> nn.Module:
    return MODELS[cfg.kind](cfg=cfg, item_codes=item_codes, level_sizes=level_sizes, max_history=max_history)
