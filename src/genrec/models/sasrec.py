"""SASRec (Kang & McAuley, ICDM 2018): a causal Transformer over item embeddings, trained with full-softmax
cross-entropy over the whole catalogue at every position. The strong ID-based baseline beside TIGER, trained
through the same data, splits, trainer and evaluator, and the collab stage's source of item embeddings.

The optional repeat bias (`models/repeat.py`) is trained apart from the model: its own cross-entropy on the
model's detached logits plus the offsets. Trained jointly it took over the push that trains the tied embeddings
away from the items just seen (each history item is a negative at every later position), and the model itself
got worse (bench/NOTES.md); apart, the model trains exactly as without it (but for gradient clipping's shared
norm), and the bias learns only how likely the data makes a repeat, which matters where history items stay in
the ranking.

Shapes: B users, T history positions, D d_model, N catalogue items.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.config import SASRecConfig
from genrec.data.batches import Batch
from genrec.ids.catalog import Catalog
from genrec.models.layers import EncoderLayer
from genrec.models.pretrained import Pretrained
from genrec.models.repeat import RepeatBias, seen_rows
from genrec.models.types import Output, RankingMethod
from genrec.search import drop_items, ranks_in_scores


class SASRec(nn.Module, Pretrained):
    kind = "sasrec"
    methods = ("sasrec",)  # every item scored by a dot product with the history's state: a complete ranking
    learns_from_teacher = False
    uses_sids = False
    all_positions = True  # trains on whole sequences, a target at every position

    def __init__(self, *, cfg: SASRecConfig, num_items: int, max_history: int) -> None:
        super().__init__()
        self.cfg, self.num_items, self.max_history = cfg, num_items, max_history
        D = cfg.d_model
        self.item_emb = nn.Embedding(num_items + 1, D)  # last row: padding
        self.pos_emb = nn.Embedding(max_history, D)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model=D, num_heads=cfg.num_heads, head_dim=cfg.head_dim, d_ff=cfg.d_ff, dropout=cfg.dropout,
                         attention_dropout=cfg.dropout if cfg.attention_dropout < 0 else cfg.attention_dropout)
            for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(D)
        self.drop = nn.Dropout(cfg.dropout)
        self.repeat = RepeatBias(max_history) if cfg.repeat_bias else None
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"num_items": self.num_items, "max_history": self.max_history}

    @classmethod
    def from_catalog(cls, cfg: SASRecConfig, *, catalog: Catalog, max_history: int) -> SASRec:
        return cls(cfg=cfg, num_items=catalog.num_items, max_history=max_history)

    @classmethod
    def from_checkpoint(cls, cfg: SASRecConfig, meta: dict[str, Any]) -> SASRec:
        return cls(cfg=cfg, num_items=meta["num_items"], max_history=meta["max_history"])

    def item_embeddings(self) -> Tensor:
        """The catalogue's item embeddings [N, D] (input and output layer are tied)."""
        return self.item_emb.weight[: self.num_items]

    def hidden(self, history: Tensor) -> Tensor:
        """history [B, T] left-padded with -1 -> states [B, T, D]; state t summarises items <= t."""
        valid = history >= 0
        x = self.item_emb(torch.where(valid, history, self.num_items))
        count = valid.long().cumsum(1)  # [B, T] items up to and including t
        if self.cfg.positions_from == "last":  # as Kang & McAuley: the most recent item at max_history - 1
            pos = (self.max_history - 1 - (count[:, -1:] - count)).clamp(min=0, max=self.max_history - 1)
        else:  # from the first item: a prefix encodes the same alone or inside a longer sequence
            pos = (count - 1).clamp(min=0, max=self.max_history - 1)
        x = self.drop((x * self.cfg.d_model**0.5 + self.pos_emb(pos)) * valid[..., None])
        T = history.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=history.device).tril()
        mask = causal[None, None] & valid[:, None, None, :]  # [B, 1, T, T]
        mask = mask | torch.eye(T, dtype=torch.bool, device=history.device)  # padded rows attend to themselves
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)

    def logits(self, h: Tensor) -> Tensor:
        """[..., D] -> [..., N] (item embeddings tied to the output), in float32 even under bf16 autocast: bf16
        logits would tie many items with one another and blur the ranking."""
        with torch.autocast(h.device.type, enabled=False):
            return h.float() @ self.item_embeddings().float().T

    def raw_logits(self, history: Tensor, live: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """history [B, T] -> float logits without the repeat bias of the item after each position where live
        [B, T] is true, or after the last position (live None): [n, N]; with each row's history items and how
        long ago each was seen [n, T] (`repeat.seen_rows`)."""
        h = self.hidden(history)  # [B, T, D]
        items, ago = seen_rows(history, live)  # [n, T]
        return self.logits(h[:, -1] if live is None else h[live]), items, ago

    def with_repeat(self, z: Tensor, items: Tensor, ago: Tensor) -> Tensor:
        return z.scatter_add(1, items.clamp(min=0), self.repeat(ago)) if self.repeat is not None else z

    def next_logits(self, history: Tensor, live: Tensor | None) -> tuple[Tensor, Tensor]:
        """`raw_logits` with the repeat bias added: [n, N]; and the history items each row has seen [n, T] (-1
        elsewhere)."""
        z, items, ago = self.raw_logits(history, live)
        return self.with_repeat(z, items, ago), torch.where(ago >= 0, items, -1)

    def forward(self, batch: Batch, *, label_smoothing: float = 0.0, teacher: Tensor | None = None,
                distill: float = 0.0) -> Output:
        """targets [B, T]: the next item after every position (-1: none); or [B]: after the last position."""
        targets = batch.targets
        assert targets is not None and teacher is None
        if targets.ndim == 2:
            live = targets >= 0
            z, items, ago = self.raw_logits(batch.history, live)
            targets = targets[live]  # [n]
        else:
            z, items, ago = self.raw_logits(batch.history[:, -self.max_history :], None)
        loss = F.cross_entropy(z, targets, label_smoothing=label_smoothing)
        if self.repeat is not None:  # trained apart, on the model's detached logits: the model learns as without it
            loss = loss + F.cross_entropy(self.with_repeat(z.detach(), items, ago), targets)
        return Output(loss=loss, logits=[z])

    @torch.no_grad()
    def next_item_probs(self, batch: Batch, temperature: float = 1.0) -> Tensor:
        """The distribution over the catalogue of the item after each live target's history: [n, N], rows in the
        order of `targets[targets >= 0]` (per-position targets [B, T]) or of the batch (targets [B]). The teacher
        of distillation. With a repeat bias the model's own view of the history items; without one they get
        zero mass (as the evaluator's default ranking removes them)."""
        targets = batch.targets
        assert targets is not None
        if targets.ndim == 2:  # the target after position t has seen the items at positions <= t
            z, seen_items = self.next_logits(batch.history, targets >= 0)
        else:
            z, seen_items = self.next_logits(batch.history[:, -self.max_history :], None)
        z = z / temperature
        return F.softmax(z if self.repeat is not None else drop_items(z, seen_items), dim=-1)

    @torch.no_grad()
    def score(self, batch: Batch, exclude_history: bool = False) -> Tensor:
        """Log-probabilities of every catalogue item as the next one: [B, N] (-inf for removed history items)."""
        z, _ = self.next_logits(batch.history[:, -self.max_history :], None)
        scores = F.log_softmax(z, dim=-1)
        return drop_items(scores, batch.history) if exclude_history else scores

    def ranking(self, name: str) -> RankingMethod:
        if name != "sasrec":
            raise KeyError(name)
        return RankingMethod("sasrec", complete=True, recommend=self._recommend, target_ranks=self._target_ranks)

    @torch.no_grad()
    def _recommend(self, batch: Batch, k: int, exclude_history: bool) -> tuple[Tensor, Tensor]:
        top, items = self.score(batch, exclude_history).topk(min(k, self.num_items), dim=1)
        return torch.where(torch.isfinite(top), items, -1), top

    @torch.no_grad()
    def _target_ranks(self, batch: Batch, k: int, exclude_history: bool) -> Tensor:
        return ranks_in_scores(self.score(batch, exclude_history), batch.targets, k)
