"""Content only: a baseline that needs no training and no interactions, for new items above all. A user's next
item is ranked by the cosine between the mean text embedding of their `recent` last history items and each
item's (the embed stage's L2-normalised vectors). Offered to the evaluator like any model's ranking method
(`content`, complete), so it is measured under the same protocol, slices included."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.data.batches import Batch
from genrec.models.types import RankingMethod
from genrec.search import drop_items, ranks_in_scores


def recent_text_cosines(item_text: Tensor, history: Tensor) -> Tensor:
    """item_text [N, E] (L2-normalised), history [B, r] (-1: padding) -> the cosine of every item's text with the
    mean of the history items' [B, N], in float32."""
    with torch.autocast(item_text.device.type, enabled=False):
        valid = (history >= 0).float()[..., None]
        query = (item_text[history.clamp(min=0)].float() * valid).sum(1)  # [B, E]
        return F.normalize(query, dim=-1) @ item_text.float().T  # [B, N]


class ContentBaseline(nn.Module):
    methods = ("content",)
    uses_sids = False

    def __init__(self, text: Tensor, *, max_history: int, recent: int = 3) -> None:
        super().__init__()
        self.register_buffer("item_text", F.normalize(text.float(), dim=-1))  # [N, E]
        self.max_history, self.recent = max_history, recent

    def score(self, batch: Batch, exclude_history: bool) -> Tensor:
        """Cosine of every item with the mean of the last `recent` history items' text: [B, N]."""
        scores = recent_text_cosines(self.item_text, batch.history[:, -min(self.recent, self.max_history) :])
        return drop_items(scores, batch.history[:, -self.max_history :]) if exclude_history else scores

    def ranking(self, name: str) -> RankingMethod:
        if name != "content":
            raise KeyError(name)

        def recommend(batch: Batch, k: int, exclude_history: bool) -> tuple[Tensor, Tensor]:
            top, items = self.score(batch, exclude_history).topk(min(k, self.item_text.shape[0]), dim=1)
            return torch.where(torch.isfinite(top), items, -1), top

        def target_ranks(batch: Batch, k: int, exclude_history: bool) -> Tensor:
            return ranks_in_scores(self.score(batch, exclude_history), batch.targets, k)

        return RankingMethod("content", complete=True, recommend=recommend, target_ranks=target_ranks)
