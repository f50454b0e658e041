"""The dense side of the hybrid (LIGER: Yang et al., "Unifying Generative and Dense Retrieval for Sequential
Recommendation"): item text as model input, and a head that predicts the next item's vector, so that a model
that generates semantic IDs can also score every item, new ones included.

- `ItemText`: the items' text embeddings [N, E] (the embed stage's, L2-normalised; a buffer, so that a model
  directory carries them) and a learned projection to d_model. With `text_input` the projection of each history
  item's text is added to its token.
- `DenseHead`: a history state [n, D] -> the cosine of its projection with every item's vector, divided by a
  temperature -> logits [n, N], trained with a full-catalogue softmax beside the generative loss. An item's
  vector is its projected text ("text"), plus the sum of its code embeddings ("text+codes"): a new item has text
  and codes but no interactions, and both reach it. With a repeat bias the history items get its offsets, as
  in SASRec. `new_items` [N] marks the items no training sequence held (the catalogue's new items; items added to
  a trained model join them).
- Ranking methods built here for the model: `dense` (every item by its dense log-probability: complete),
  `hybrid-K` (beam search's top K plus every new item, re-ranked by the dense score: at most K + new items) and
  `fusion-K` (the same candidates ranked by the sum of the two log-probabilities, generative and dense; a new
  item's generative log-probability is teacher-forced when beam search did not reach it), and `newshare-S`
  (the dense ranking with S% of its probability on the new items, spread among them as the head spreads it;
  plain `newshare`: their share of the catalogue) and `newtext-S` / `newtext` (the same, the new items' share
  spread by their text's likeness to the history's, as the content baseline ranks): complete.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.config import TigerConfig
from genrec.data.batches import Batch
from genrec.errors import GenrecError
from genrec.models.content import recent_text_cosines
from genrec.models.repeat import RepeatBias, seen_rows
from genrec.models.types import RankingMethod, method_parameter
from genrec.search import beam_search, drop_items, ranks_in_scores

if TYPE_CHECKING:
    from genrec.ids.catalog import Catalog
    from genrec.models.tiger import Tiger

logger = logging.getLogger(__name__)

DENSE_METHODS = ("dense", "hybrid", "fusion", "newshare", "newtext")  # what a model with a dense head offers
RECENT = 3  # newtext: the history items whose text the new items are compared with (as the content baseline)


def without_text_if_none(cfg: TigerConfig, catalog: Catalog) -> TigerConfig:
    """`cfg`, or, when it reads item text (text input, dense head) and the catalogue has none, `cfg` without
    either (a warning: generation alone); a GenrecError when the dense head is all it would learn."""
    if not (cfg.text_input or cfg.dense_weight > 0) or catalog.text is not None:
        return cfg
    if cfg.generative_weight == 0:
        raise GenrecError("model.tiger.generative_weight=0 leaves only the dense head, which reads the items' text "
                          "embeddings, and this run has none (its items have no text); set "
                          "model.tiger.generative_weight=1 and model.tiger.dense_weight=0")
    logger.warning("the items have no text, so TIGER trains without its text input and dense head "
                   "(model.tiger.text_input and dense_weight need item text): generation only")
    return dataclasses.replace(cfg, text_input=False, dense_weight=0.0)


class ItemText(nn.Module):
    """Frozen item text embeddings [N, E] and their learned projection to d_model."""

    def __init__(self, text: Tensor, d_model: int) -> None:
        super().__init__()
        self.register_buffer("item_text", text.float(), persistent=True)  # [N, E]
        self.proj = nn.Linear(text.shape[1], d_model, bias=False)

    def forward(self, items: Tensor) -> Tensor:
        """items [...] (-1: padding) -> projected text [..., D] (zero for padding)."""
        return self.proj(self.item_text[items.clamp(min=0)]) * (items >= 0)[..., None]

    def all(self) -> Tensor:  # [N, D]
        return self.proj(self.item_text)


class DenseHead(nn.Module):
    """History state -> next-item logits over the catalogue by cosine with the items' vectors."""

    def __init__(self, *, d_model: int, num_items: int, max_history: int, temperature: float,
                 repeat_bias: bool) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, d_model)
        self.temperature = temperature
        self.register_buffer("new_items", torch.zeros(num_items, dtype=torch.bool), persistent=True)  # [N]
        self.repeat = RepeatBias(max_history) if repeat_bias else None

    def logits(self, states: Tensor, item_vectors: Tensor, history: Tensor, live: Tensor | None) -> Tensor:
        """states [n, D] of the predictions after each position where live [B, T] is true (or after the last
        position: live None) of history [B, T]; item_vectors [N, D] -> float32 logits [n, N]."""
        with torch.autocast(states.device.type, enabled=False):  # bf16 cosines would tie many items
            q = F.normalize(self.query(states.float()), dim=-1)
            z = q @ F.normalize(item_vectors.float(), dim=-1).T / self.temperature  # [n, N]
        if self.repeat is not None:
            items, ago = seen_rows(history, live)  # [n, T]
            z = z.scatter_add(1, items.clamp(min=0), self.repeat(ago))
        return z


def item_vectors(model: Tiger) -> Tensor:
    """`model.dense_vectors()`, kept between ranking calls while nothing it is made from has changed: projecting
    every item's text is most of a lone request's dense scoring. Recomputed in training or under autograd (it must
    carry gradients), after any in-place change of a source (an optimiser step, items added) and per autocast
    setting."""
    if model.training or torch.is_grad_enabled():
        return model.dense_vectors()
    assert model.text is not None
    device = model.text.item_text.device.type
    sources = (model.text.item_text, model.text.proj.weight, model.item_codes, model.offsets, model.code_emb.weight)
    key = (tuple((t.data_ptr(), t._version) for t in sources), torch.is_autocast_enabled(device),
           torch.get_autocast_dtype(device))  # as the decoder's node states are kept (models/tiger_decoder.py)
    cached = model.__dict__.get("_item_vectors")
    if cached is None or cached[0] != key:
        cached = model.__dict__["_item_vectors"] = (key, model.dense_vectors())
    return cached[1]


def dense_logits(model: Tiger, batch: Batch) -> tuple[Tensor, Tensor]:
    """The dense head's logits over the catalogue after each history [B, N], and the histories [B, T] it read."""
    history = batch.history[:, -model.max_history :]
    memory = model.encode(Batch(batch.users, history))
    return model.dense.logits(model.item_states(memory)[:, -1], item_vectors(model), history, None), history


def dense_log_probs(model: Tiger, batch: Batch, exclude_history: bool) -> Tensor:
    """Every catalogue item's dense log-probability as the next item [B, N] (-inf for removed history items)."""
    z, history = dense_logits(model, batch)
    scores = F.log_softmax(z, dim=-1)
    return drop_items(scores, history) if exclude_history else scores


def new_share_log_probs(model: Tiger, batch: Batch, share: float, exclude_history: bool,
                        by_text: bool = False) -> Tensor:
    """The dense head's distribution with a set share of its mass on the new items [B, N]: the known items get
    (1 - share) spread as the head spreads it among them, the new items `share` spread likewise among them, or
    (`by_text`) by the likeness of their text to the last RECENT history items' (cosine over the head's
    temperature, as the content baseline ranks). The head has never seen a new item as a target, so it cannot
    know how often one is next; `share` says it. Nor has it learned how to tell new items apart, which text
    likeness does without training."""
    z, history = dense_logits(model, batch)
    new = model.dense.new_items
    if not bool(new.any()):
        scores = F.log_softmax(z, dim=-1)
    else:
        spread = z
        if by_text:
            assert model.text is not None
            text = F.normalize(model.text.item_text.float(), dim=-1)
            spread = recent_text_cosines(text, history[:, -RECENT:]) / model.dense.temperature
        old = F.log_softmax(z.masked_fill(new, float("-inf")), dim=-1) + math.log1p(-share)
        fresh = F.log_softmax(spread.masked_fill(~new, float("-inf")), dim=-1) + math.log(share)
        scores = torch.where(new, fresh, old)
    return drop_items(scores, history) if exclude_history else scores


def complete_method(name: str, score: Callable[[Batch, bool], Tensor]) -> RankingMethod:
    """A ranking method of every catalogue item by `score(batch, exclude_history)` [B, N] (-inf: left out)."""
    def recommend(batch: Batch, k: int, exclude_history: bool) -> tuple[Tensor, Tensor]:
        scores = score(batch, exclude_history)
        top, items = scores.topk(min(k, scores.shape[1]), dim=1)
        return torch.where(torch.isfinite(top), items, -1), top

    def target_ranks(batch: Batch, k: int, exclude_history: bool) -> Tensor:
        return ranks_in_scores(score(batch, exclude_history), batch.targets, k)

    return RankingMethod(name, complete=True, recommend=torch.no_grad()(recommend),
                         target_ranks=torch.no_grad()(target_ranks))


def dense_method(model: Tiger) -> RankingMethod:
    return complete_method("dense", lambda batch, exclude: dense_log_probs(model, batch, exclude))


def new_share_method(model: Tiger, name: str, share: float) -> RankingMethod:
    by_text = name.startswith("newtext")
    return complete_method(name, lambda batch, exclude: new_share_log_probs(model, batch, share, exclude, by_text))


def hybrid_scores(model: Tiger, batch: Batch, candidates: int, exclude_history: bool) -> Tensor:
    """Dense log-probabilities [B, N] of beam search's top `candidates` items and of every new item; -inf for the
    rest (and for history items when removed)."""
    beam = beam_search(model.code_decoder(), batch, model.trie, beam_size=candidates,
                       exclude_history=exclude_history).items  # [B, K]
    scores = dense_log_probs(model, batch, exclude_history)  # [B, N]
    keep = model.dense.new_items[None].expand_as(scores).clone()
    rows, cols = (beam >= 0).nonzero(as_tuple=True)
    keep[rows, beam[rows, cols]] = True
    return scores.masked_fill(~keep, float("-inf"))


def fusion_scores(model: Tiger, batch: Batch, candidates: int, exclude_history: bool) -> Tensor:
    """Generative plus dense log-probability [B, N] of beam search's top `candidates` items and of every new item;
    -inf for the rest (and for history items when removed)."""
    decoder = model.code_decoder()
    beam = beam_search(decoder, batch, model.trie, beam_size=candidates, exclude_history=exclude_history)
    dense = dense_log_probs(model, batch, exclude_history)  # [B, N]
    generative = torch.full_like(dense, float("-inf"))
    new = model.dense.new_items.nonzero()[:, 0].tolist()
    if new:
        state = decoder.start(Batch(batch.users, batch.history[:, -model.max_history :]))
        B = batch.history.shape[0]
        for item in new:  # teacher-forced: a new item is a candidate whether or not the beam reached it
            target = torch.full((B,), item, dtype=torch.long, device=dense.device)
            generative[:, item] = decoder.target_log_probs(state, target).float()
    rows, cols = (beam.items >= 0).nonzero(as_tuple=True)
    generative[rows, beam.items[rows, cols]] = beam.scores[rows, cols].float()
    return dense + generative


def hybrid_method(model: Tiger, name: str, candidates: int, fuse: bool = False) -> RankingMethod:
    score = fusion_scores if fuse else hybrid_scores

    def recommend(batch: Batch, k: int, exclude_history: bool) -> tuple[Tensor, Tensor]:
        scores = score(model, batch, candidates, exclude_history)
        top, items = scores.topk(min(k, scores.shape[1]), dim=1)
        return torch.where(torch.isfinite(top), items, -1), top

    def target_ranks(batch: Batch, k: int, exclude_history: bool) -> Tensor:
        return ranks_in_scores(score(model, batch, candidates, exclude_history), batch.targets, k)

    return RankingMethod(name, complete=False, recommend=torch.no_grad()(recommend),
                         target_ranks=torch.no_grad()(target_ranks), cost_per_item=len(model.decoder),
                         list_size=candidates + int(model.dense.new_items.sum()))


def dense_ranking(model: Tiger, name: str) -> RankingMethod | None:
    """The ranking method `name` of a model with a dense head, or None when it is none of the dense side's."""
    if name == "dense":  # every item by its dense score
        return dense_method(model)
    if name in ("hybrid", "fusion"):  # beam top K + new items, re-ranked
        return hybrid_method(model, name, model.cfg.hybrid_candidates, fuse=name == "fusion")
    if name in ("newshare", "newtext"):  # the new items' share of the catalogue
        new = model.dense.new_items
        return new_share_method(model, name, max(float(new.float().mean()), 1.0 / new.numel()))
    size = method_parameter(name)
    if size is None:
        return None
    if name.startswith(("newshare-", "newtext-")):
        return new_share_method(model, name, size / 100.0)
    return hybrid_method(model, name, size, fuse=name.startswith("fusion"))  # hybrid-K, fusion-K
