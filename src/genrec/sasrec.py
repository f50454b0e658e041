"""SASRec (Kang & McAuley, ICDM 2018): a causal Transformer over item embeddings, trained with full-softmax
cross-entropy over the whole catalogue at every position. The strong ID-based baseline beside TIGER, trained
through the same data, splits, trainer and evaluator.

Shapes: B users, T history positions, D d_model, N catalogue items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.config import ModelConfig
from genrec.metrics import MISS
from genrec.tiger import Batch, EncoderLayer, Output


def _drop_items(scores: Tensor, items: Tensor) -> Tensor:
    """scores [n, N] with the listed items [n, m] (-1: none) set to -inf, in place."""
    rows, cols = (items >= 0).nonzero(as_tuple=True)
    scores[rows, items[rows, cols]] = float("-inf")
    return scores


class SASRec(nn.Module):
    """`item_codes` [N, C] is kept only to identify the catalogue the model was trained on."""

    method = "sasrec"  # metric key of this model's ranking
    complete_ranking = True  # every item is scored, so any k can be reported

    def __init__(self, *, cfg: ModelConfig, item_codes: Tensor, level_sizes: list[int], max_history: int) -> None:
        super().__init__()
        self.cfg, self.level_sizes, self.max_history = cfg, list(level_sizes), max_history
        self.register_buffer("item_codes", item_codes.long(), persistent=True)  # [N, C]
        N, D = item_codes.shape[0], cfg.d_model
        self.item_emb = nn.Embedding(N + 1, D)  # last row: padding
        self.pos_emb = nn.Embedding(max_history, D)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.norm = nn.LayerNorm(D)
        self.drop = nn.Dropout(cfg.dropout)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    all_positions = True  # trains on whole sequences, a target at every position

    @property
    def num_items(self) -> int:
        return int(self.item_codes.shape[0])

    def hidden(self, history: Tensor) -> Tensor:
        """history [B, T] left-padded with -1 -> states [B, T, D]; state t summarises items <= t."""
        valid = history >= 0
        x = self.item_emb(torch.where(valid, history, self.num_items))
        pos = (valid.long().cumsum(1) - 1).clamp(min=0, max=self.max_history - 1)  # from the first item
        x = self.drop((x * self.cfg.d_model**0.5 + self.pos_emb(pos)) * valid[..., None])
        T = history.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=history.device).tril()
        mask = causal[None, None] & valid[:, None, None, :]  # [B, 1, T, T]
        mask = mask | torch.eye(T, dtype=torch.bool, device=history.device)  # padded rows attend to themselves
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)

    def logits(self, h: Tensor) -> Tensor:  # [..., D] -> [..., N] (item embeddings tied to the output)
        return h @ self.item_emb.weight[: self.num_items].T

    def forward(self, batch: Batch, label_smoothing: float = 0.0) -> Output:
        """targets [B, T]: the next item after every position (-1: none); or [B]: after the last position."""
        targets = batch.targets
        assert targets is not None
        history = batch.history if targets.ndim == 2 else batch.history[:, -self.max_history :]
        h = self.hidden(history)
        if targets.ndim == 2:
            live = targets >= 0
            h, targets = h[live], targets[live]  # [n, D], [n]
        else:
            h = h[:, -1]
        z = self.logits(h)
        loss = F.cross_entropy(z.float(), targets, label_smoothing=label_smoothing)
        return Output(loss=loss, logits=[z])

    @torch.no_grad()
    def next_item_probs(self, batch: Batch, temperature: float = 1.0) -> Tensor:
        """The distribution over the catalogue of the item after each live target's history, with the items of
        that history removed (as the evaluator ranks): [n, N], rows in the order of `targets[targets >= 0]`
        (per-position targets [B, T]) or of the batch (targets [B]). The teacher of distillation."""
        targets = batch.targets
        assert targets is not None
        history = batch.history if targets.ndim == 2 else batch.history[:, -self.max_history :]
        h = self.hidden(history)  # [B, T, D]
        T = history.shape[1]
        if targets.ndim == 2:  # the target after position t has seen the items at positions <= t
            live = targets >= 0
            seen = torch.where(torch.ones(T, T, dtype=torch.bool, device=h.device).tril()[None], history[:, None], -1)
            h, seen = h[live], seen[live]  # [n, D], [n, T]
        else:
            h, seen = h[:, -1], history
        z = self.logits(h).float() / temperature  # [n, N]
        return F.softmax(_drop_items(z, seen), dim=-1)

    @torch.no_grad()
    def score(self, batch: Batch) -> Tensor:
        """Log-probabilities of every catalogue item as the next one: [B, N]."""
        h = self.hidden(batch.history[:, -self.max_history :])[:, -1]
        return F.log_softmax(self.logits(h).float(), dim=-1)

    def _scores(self, batch: Batch, exclude_history: bool) -> Tensor:
        scores = self.score(batch)
        return _drop_items(scores, batch.history) if exclude_history else scores

    @torch.no_grad()
    def recommend(self, batch: Batch, k: int, exclude_history: bool = False) -> tuple[Tensor, Tensor]:
        """Top-k items by exact score: (item_ids [B, k], scores [B, k])."""
        top, items = self._scores(batch, exclude_history).topk(min(k, self.num_items), dim=1)
        return items, top

    @torch.no_grad()
    def target_ranks(self, batch: Batch, k: int, exclude_history: bool = False) -> Tensor:
        """0-based rank of each target (items scoring strictly higher), MISS beyond k or if excluded: [B]."""
        scores = self._scores(batch, exclude_history)
        own = scores.gather(1, batch.targets[:, None])
        ranks = (scores > own).sum(1)
        return torch.where((ranks < k) & torch.isfinite(own[:, 0]), ranks, torch.full_like(ranks, MISS))
