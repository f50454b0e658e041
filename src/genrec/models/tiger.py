"""TIGER: an encoder-decoder Transformer that generates the next item's semantic ID code by code.

Shapes: B users, T history items, C codes per item (levels incl. the collision level), S encoder tokens,
W beams (or trie nodes) per user, t decoder positions, D d_model, H heads, E head_dim, V code vocabulary.

The encoder reads the user's history (one token per code, as in the paper, or one token per item: the sum of
its code embeddings) plus an optional hashed user token. The decoder starts from BOS and emits one code per
level; level l's logits cover only level l's codes. Decoding shares the encoder memory across beams (no copy
per beam); `tiger_decoder` has how it decodes inside the search.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.config import TigerConfig
from genrec.data.batches import Batch
from genrec.ids.catalog import Catalog
from genrec.ids.trie import Trie, build_trie
from genrec.models.code_losses import (code_distributions, masked_cross_entropy, training_child_mask,
                                       without_new_items)
from genrec.models.dense import DENSE_METHODS, DenseHead, ItemText, dense_ranking, without_text_if_none
from genrec.models.layers import DecoderLayer, EncoderLayer, Memory
from genrec.models.pretrained import Pretrained
from genrec.models.repeat import RepeatBias, child_offsets, history_nodes, seen_rows
from genrec.models.tiger_decoder import TigerDecoder
from genrec.models.types import Output, RankingMethod
from genrec.search import beam_ranks, beam_search, drop_items, ranks_in_scores, score_catalog


class Tiger(nn.Module, Pretrained):
    """Encoder-decoder over semantic-ID codes. `level_sizes[l]` codes at level l; `item_codes` [N, C] buffer."""
    kind = "tiger"

    methods = ("generative", "exact")  # constrained beam search (the default); every item scored
    learns_from_teacher = True  # distillation from a teacher's next-item distribution (`forward`)
    uses_sids = True  # generates semantic IDs: its checkpoint is tied to them

    def __init__(self, *, cfg: TigerConfig, item_codes: Tensor, level_sizes: list[int], max_history: int,
                 item_text: Tensor | None = None) -> None:
        super().__init__()
        self.cfg, self.level_sizes, self.max_history = cfg, list(level_sizes), max_history
        self.methods = self.offered_methods(cfg)
        C = len(level_sizes)
        assert item_codes.shape[1] == C
        self.register_buffer("item_codes", item_codes.long(), persistent=True)  # [N, C]
        offsets = torch.tensor([0] + level_sizes[:-1]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)  # [C] first token id of each level
        # [N] items no training sequence holds, never negatives (code_losses); training only: ranking reads dense's
        self.register_buffer("new_items", torch.zeros(item_codes.shape[0], dtype=torch.bool), persistent=False)
        V, D = sum(level_sizes), cfg.d_model
        self.code_emb = nn.Embedding(V + 1, D)  # last row: BOS for the decoder
        self.user_emb = nn.Embedding(cfg.num_user_buckets + 1, D) if cfg.num_user_buckets else None
        per_item = C if cfg.item_tokens == "codes" else 1
        self.enc_pos = nn.Embedding(max_history * per_item + 1, D)  # counted from the most recent token
        self.dec_pos = nn.Embedding(C, D)
        # cross-attention bias per head by item recency: 0 = the query's most recent item, ..., max_history = user
        self.recency_emb = nn.Embedding(max_history + 1, cfg.num_heads) if cfg.recency_bias else None
        layer = dict(d_model=D, num_heads=cfg.num_heads, head_dim=cfg.head_dim, d_ff=cfg.d_ff, dropout=cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(**layer) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(**layer) for _ in range(cfg.decoder_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(D), nn.LayerNorm(D)
        self.head = nn.Linear(D, V, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        # offsets act inside the softmax over a node's children (a config asking for one without it is refused)
        self.repeat = RepeatBias(max_history) if cfg.repeat_bias and cfg.trie_softmax else None
        # the hybrid (models/dense.py): item text as input, a dense head beside generation
        self.text = ItemText(item_text, D) if item_text is not None and self.needs_text(cfg) else None
        assert (self.text is None) == (not self.needs_text(cfg)), "this configuration needs the items' text"
        self.dense = DenseHead(d_model=D, num_items=item_codes.shape[0], max_history=max_history,
                               temperature=cfg.dense_temperature, repeat_bias=self.repeat is not None) \
            if cfg.dense_weight > 0 else None
        self.apply(self._init)
        if self.recency_emb is not None:
            nn.init.zeros_(self.recency_emb.weight)  # starts as plain attention

    @staticmethod
    def needs_text(cfg: TigerConfig) -> bool:
        return cfg.text_input or cfg.dense_weight > 0

    @classmethod
    def offered_methods(cls, cfg: TigerConfig) -> tuple[str, ...]:
        """Beam search (the default) and exact scoring; with a dense head also dense, hybrid and fusion (-<K>), and
        newshare and newtext (-<S>)."""
        if cfg.dense_weight > 0 and cfg.generative_weight == 0:  # only the dense head learns: it is the default
            return ("dense", "generative", "exact") + DENSE_METHODS[1:]
        return ("generative", "exact") + (DENSE_METHODS if cfg.dense_weight > 0 else ())

    @property
    def default_methods(self) -> tuple[str, ...]:
        """With a dense head beside generation: the hybrid (the default ranking), generation and dense."""
        hybrid = self.methods[0] == "generative" and "hybrid" in self.methods
        return ("hybrid", "generative", "dense") if hybrid else self.methods[:1]

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"level_sizes": self.level_sizes, "max_history": self.max_history,
                "num_items": int(self.item_codes.shape[0]),
                "text_dim": 0 if self.text is None else int(self.text.item_text.shape[1])}

    @classmethod
    def from_catalog(cls, cfg: TigerConfig, *, catalog: Catalog, max_history: int) -> Tiger:
        cfg = without_text_if_none(cfg, catalog)
        text = torch.from_numpy(catalog.text) if cls.needs_text(cfg) else None
        model = cls(cfg=cfg, item_codes=torch.from_numpy(catalog.require_sids()), level_sizes=catalog.level_sizes,
                    max_history=max_history, item_text=text)
        if catalog.new_items is not None:
            model.new_items.copy_(torch.from_numpy(catalog.new_items))
            if model.dense is not None:
                model.dense.new_items.copy_(model.new_items)
        return model

    @classmethod
    def from_checkpoint(cls, cfg: TigerConfig, meta: dict[str, Any]) -> Tiger:
        """An untrained Tiger of the saved shape (its weights, `item_codes` and item text come from the state
        dict)."""
        codes = torch.zeros(meta["num_items"], len(meta["level_sizes"]), dtype=torch.long)
        text = torch.zeros(meta["num_items"], meta["text_dim"]) if meta.get("text_dim") else None
        return cls(cfg=cfg, item_codes=codes, level_sizes=meta["level_sizes"], max_history=meta["max_history"],
                   item_text=text)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    @property
    def all_positions(self) -> bool:
        """Whether training feeds whole sequences with a target at every position (causal encoder only)."""
        return self.cfg.causal_encoder

    @property
    def trie(self) -> Trie:
        """The prefix trie of the catalogue's semantic IDs, built once from `item_codes`."""
        trie = self.__dict__.get("_trie")
        if trie is None or trie.leaf_item.device != self.item_codes.device:
            trie = build_trie(self.item_codes.cpu().numpy()).to(self.item_codes.device)
            self.__dict__["_trie"] = trie
        return trie

    # ---- encoder -------------------------------------------------------------------------------------
    def encode(self, batch: Batch) -> Memory:
        """Histories -> cross-attention memory. Tokens carry the index of their item (`token_item`), so a
        causal encoder lets a token see only tokens of the same or earlier items (and the user token)."""
        history = batch.history if batch.targets is not None and batch.targets.ndim == 2 else \
            batch.history[:, -self.max_history :]  # [B, T]
        valid = history >= 0
        codes = self.item_codes[history.clamp(min=0)] + self.offsets  # [B, T, C]
        emb = self.code_emb(codes)  # [B, T, C, D]
        B, T, C, D = emb.shape
        per_item = 1 if self.cfg.item_tokens == "sum" else C
        if self.text is not None and self.cfg.text_input:  # each item's projected text joins its token(s)
            emb = emb + self.text(history)[:, :, None] / (C if per_item == 1 else 1)
        x = emb.sum(2) if per_item == 1 else emb.reshape(B, T * C, D)  # [B, S, D]
        mask = valid.repeat_interleave(per_item, dim=1)  # [B, S]
        token_item = torch.arange(T, device=x.device).repeat_interleave(per_item)  # [S]
        if self.cfg.causal_encoder:  # positions from the first item, so a prefix encodes as it would alone
            pos = (mask.long().cumsum(1) - 1).clamp(min=0)  # [B, S]
        else:  # positions from the most recent token
            pos = torch.arange(x.shape[1] - 1, -1, -1, device=x.device).expand(B, -1)
        x = x + self.enc_pos(pos.clamp(max=self.enc_pos.num_embeddings - 2))
        if self.user_emb is not None:
            x = torch.cat([self.user_emb(batch.users)[:, None] + self.enc_pos.weight[-1], x], dim=1)
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
            token_item = torch.cat([token_item.new_full((1,), -1), token_item])
        key_mask = mask[:, None, None, :]  # [B, 1, 1, S]
        enc_mask = key_mask
        if self.cfg.causal_encoder:
            enc_mask = key_mask & (token_item[None, :] <= token_item[:, None])[None, None]  # [B, 1, S, S]
        x = self.drop(x)
        for layer in self.encoder:
            x = layer(x, enc_mask)
        x = self.enc_norm(x)
        keys, values = zip(*(layer.cross_attn.project_kv(x) for layer in self.decoder))
        memory = Memory(list(keys), list(values), key_mask, token_item, states=x)
        if self.recency_emb is not None and not (batch.targets is not None and batch.targets.ndim == 2):
            last = (valid * torch.arange(T, device=x.device)).amax(1)  # [B] index of the most recent item
            memory.mask = self.cross_mask(key_mask, last[:, None], token_item)  # [B, H, 1, S]
        return memory

    def item_states(self, memory: Memory) -> Tensor:
        """The encoder state at each history item's last token [B, T, D]: what the dense head reads (with the
        causal encoder, the state at item t has seen items <= t only)."""
        per_item = 1 if self.cfg.item_tokens == "sum" else self.num_levels
        first = 1 if self.user_emb is not None else 0
        T = (memory.states.shape[1] - first) // per_item
        return memory.states[:, first + per_item - 1 :: per_item][:, :T]

    def dense_vectors(self) -> Tensor:
        """Every item's dense vector [N, D]: its projected text, plus the sum of its code embeddings."""
        assert self.text is not None
        vectors = self.text.all()
        if self.cfg.dense_item == "text+codes":
            vectors = vectors + self.code_emb(self.item_codes + self.offsets).sum(1)
        return vectors

    def repeat_nodes(self, history: Tensor, live: Tensor | None = None,
                     trie: Trie | None = None) -> list[tuple[Tensor, Tensor]] | None:
        """Per depth d = 1..C (index d - 1), the seen-only depth-d trie nodes of each prediction's history and
        their repeat offsets (`models/repeat.py`): ([n, T], [n, T]) for the predictions after each position where
        live [B, T] is true, or after the last position (live None), in `trie` (default: the catalogue's); None
        without a repeat bias."""
        if self.repeat is None:
            return None
        items, ago = seen_rows(history, live)  # [n, T]
        trie = self.trie if trie is None else trie
        return [history_nodes(trie, items, ago, self.repeat, d) for d in range(1, self.num_levels + 1)]

    def cross_mask(self, allowed: Tensor, query_item: Tensor, token_item: Tensor) -> Tensor:
        """allowed [B, 1, Q, S] (bool), query_item [B or 1, Q] each query's most recent history position,
        token_item [S] each token's (-1: the user token) -> additive mask [B, H, Q, S]: the head's bias for how
        many items ago the token's item came where allowed, -inf elsewhere."""
        ago = (query_item[..., None] - token_item).clamp(0, self.max_history - 1)  # [B or 1, Q, S]
        bucket = torch.where(token_item < 0, self.max_history, ago)
        bias = self.recency_emb(bucket).movedim(-1, -3)  # [B or 1, H, Q, S]
        return torch.where(allowed, bias, float("-inf"))

    # ---- decoder -------------------------------------------------------------------------------------
    def embed_codes(self, codes: Tensor, start_level: int) -> Tensor:
        """codes [..., t] of levels start_level.. -> decoder inputs (those codes as tokens) [..., t, D]."""
        t = codes.shape[-1]
        tokens = codes + self.offsets[start_level : start_level + t]
        return self.code_emb(tokens) + self.dec_pos.weight[start_level + 1 : start_level + 1 + t]

    def bos(self, B: int, W: int) -> Tensor:  # [B, W, 1, D]
        return (self.code_emb.weight[-1] + self.dec_pos.weight[0]).expand(B, W, 1, -1)

    def decoder_inputs(self, prefix: Tensor, start: int = 0) -> Tensor:
        """Decoder inputs of positions start..d for prefixes [B, W, d] (position 0: BOS; j: code j-1)."""
        B, W, d = prefix.shape
        parts = []
        if start == 0:
            parts.append(self.bos(B, W))
            start = 1
        if start <= d:
            parts.append(self.embed_codes(prefix[:, :, start - 1 :], start - 1))
        return torch.cat(parts, dim=2)  # [B, W, d + 1 - start, D]

    def decode(
        self, x: Tensor, memory: Memory, past: list[tuple[Tensor, Tensor]] | None = None
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """x [B, W, t, D] decoder inputs -> hidden [B, W, t, D] and the new self-attention cache."""
        x = self.drop(x)
        cache = []
        for i, layer in enumerate(self.decoder):
            x, kv = layer(x, memory.keys[i], memory.values[i], memory.mask, None if past is None else past[i])
            cache.append(kv)
        return self.dec_norm(x), cache

    def log_probs(self, hidden: Tensor, level: int) -> Tensor:
        """hidden [..., D] -> log-probabilities over all of level `level`'s codes [..., K_l]."""
        lo = int(self.offsets[level])
        w = self.head.weight[lo : lo + self.level_sizes[level]]
        return F.log_softmax((hidden @ w.T).float(), dim=-1)

    def child_log_probs(self, hidden: Tensor, level: int, code: Tensor, valid: Tensor,
                        offset: Tensor | None = None) -> Tensor:
        """hidden [..., D], the codes of each node's children [..., M] (valid [..., M]) -> their log-probabilities
        [..., M]: under the full softmax over level `level`'s codes, or with `trie_softmax` over the valid
        children only, each child's logit plus its repeat `offset` [..., M] when given. Invalid slots are -inf."""
        if not self.cfg.trie_softmax:
            return self.log_probs(hidden, level).gather(-1, code).masked_fill(~valid, float("-inf"))
        lo = int(self.offsets[level])
        z = (hidden @ self.head.weight[lo : lo + self.level_sizes[level]].T).float().gather(-1, code)  # [..., M]
        if offset is not None:
            z = z + offset
        return F.log_softmax(z.masked_fill(~valid, float("-inf")), dim=-1).masked_fill(~valid, float("-inf"))

    def code_distributions(self, item_probs: Tensor, targets: Tensor) -> list[Tensor]:
        """The teacher's distribution over items [n, N] summed to each level's codes given the target's prefix
        (`code_losses.code_distributions`)."""
        return code_distributions(self, item_probs, targets)

    def forward(self, batch: Batch, *, label_smoothing: float = 0.0, teacher: Tensor | None = None,
                distill: float = 0.0) -> Output:
        """Teacher-forced loss. targets [B]: one target after each history. targets [B, T] (causal encoder
        only): the item after every history position, all trained in one pass; the decoder of the target
        after position w attends only to tokens of items <= w, exactly what it would see given that prefix.

        `teacher` [n, N]: a distribution over the catalogue for each live target (in the order of
        `targets[targets >= 0]`). Each level's loss is then (1 - distill) x the cross-entropy with the true code
        + distill x the KL divergence from the teacher's code distribution (`code_distributions`) to the model's,
        both given the true prefix."""
        targets = batch.targets
        assert targets is not None
        memory = self.encode(batch)
        if targets.ndim == 2:
            assert self.cfg.causal_encoder, "per-position targets need model.causal_encoder"
            T = targets.shape[1]
            C = self.num_levels
            sees = memory.token_item[None, :] <= torch.arange(T, device=targets.device)[:, None]  # [T, S]
            sees = sees.repeat_interleave(C, dim=0)  # [T*C, S] one row per decoder query
            memory.mask = memory.mask & sees[None, None]  # [B, 1, T*C, S]
            if self.recency_emb is not None:  # the target after position w: its most recent item is w
                query_item = torch.arange(T, device=targets.device).repeat_interleave(C)[None]  # [1, T*C]
                memory.mask = self.cross_mask(memory.mask, query_item, memory.token_item)  # [B, H, T*C, S]
            live = targets >= 0  # [B, T]
        else:
            targets, live = targets[:, None], torch.ones_like(targets[:, None], dtype=torch.bool)
        codes = self.item_codes[targets.clamp(min=0)]  # [B, W, C]
        B, W, C = codes.shape
        x = torch.cat([self.bos(B, W), self.embed_codes(codes[:, :, :-1], 0)], dim=2)  # [B, W, C, D]
        hidden, _ = self.decode(x, memory)
        hidden = hidden[live]  # [n, C, D] only real targets
        codes = codes[live]  # [n, C]
        paths = self.trie.paths(targets[live]) if self.cfg.trie_softmax else None  # [n, C] prefix nodes
        soft = None
        if teacher is not None and distill > 0:
            soft = self.code_distributions(without_new_items(self, teacher), targets[live])
        per_position = batch.targets.ndim == 2
        repeat = None if paths is None else self.repeat_nodes(
            batch.history if per_position else batch.history[:, -self.max_history :], live if per_position else None)
        logits, losses = [], []
        for level in range(C):
            lo = int(self.offsets[level])
            z = hidden[:, level] @ self.head.weight[lo : lo + self.level_sizes[level]].T  # [n, K_l]
            if repeat is not None:  # each child's offset, moved from its slot to its code's column
                child, ok = self.trie.children(level, paths[:, level])  # [n, M]
                offset = child_offsets(self.trie, level, paths[:, level, None], *repeat[level])[:, 0]
                K = self.level_sizes[level]
                z = z.float() + torch.zeros(z.shape[0], K + 1, device=z.device).scatter(
                    1, torch.where(ok, self.trie.node_code[level][child], K), offset.masked_fill(~ok, 0.0))[:, :K]
            logits.append(z)
            mask = None if paths is None else training_child_mask(self, level, paths[:, level])  # no new items
            if mask is None:
                loss = F.cross_entropy(z.float(), codes[:, level], label_smoothing=label_smoothing)
            else:
                loss = masked_cross_entropy(z.float(), codes[:, level], mask, label_smoothing)
            if soft is not None:
                logp = F.log_softmax(z.float() if mask is None else z.float().masked_fill(~mask, float("-inf")), -1)
                q = soft[level]  # zero wherever the model's softmax is masked (no item there)
                kl = (torch.xlogy(q, q) - q * logp.masked_fill(q == 0, 0.0)).sum(1).mean()
                loss = (1 - distill) * loss + distill * kl
            losses.append(loss)
        loss = torch.stack(losses).mean()
        if self.dense is not None:  # the next item's dense vector, at the same positions
            states = self.item_states(memory)
            states = states[live] if per_position else states[:, -1]
            history = batch.history if per_position else batch.history[:, -self.max_history :]
            z = self.dense.logits(states, self.dense_vectors(), history, live if per_position else None)
            # new items did not exist for training: never a negative, so that nothing teaches the head to bury them
            z = z.masked_fill(self.dense.new_items, float("-inf"))
            dense = F.cross_entropy(z, targets[live], label_smoothing=label_smoothing)
            loss = self.cfg.generative_weight * loss + self.cfg.dense_weight * dense
        return Output(loss=loss, logits=logits)

    # ---- ranking -------------------------------------------------------------------------------------
    def code_decoder(self, trie: Trie | None = None, *, use_kv_cache: bool = True) -> TigerDecoder:
        """This model as trie-constrained search sees it (`genrec.search`), over the catalogue's trie."""
        return TigerDecoder(self, self.trie if trie is None else trie, use_kv_cache=use_kv_cache)

    def ranking(self, name: str) -> RankingMethod:
        if name == "generative":  # constrained beam search: a list of beam-size items
            return RankingMethod("generative", complete=False, recommend=self._beam_recommend,
                                 target_ranks=self._beam_ranks, cost_per_item=len(self.decoder))
        if name == "exact":  # every item's log-probability: a complete ranking
            return RankingMethod("exact", complete=True, recommend=self._exact_recommend,
                                 target_ranks=self._exact_ranks, max_batch=8)
        method = dense_ranking(self, name) if self.dense is not None else None  # dense, hybrid, ...
        if method is None:
            raise KeyError(name)
        return method

    @torch.no_grad()
    def _beam_recommend(self, batch: Batch, k: int, exclude_history: bool) -> tuple[Tensor, Tensor]:
        result = beam_search(self.code_decoder(), batch, self.trie, beam_size=k, exclude_history=exclude_history)
        return result.items, result.scores

    @torch.no_grad()
    def _beam_ranks(self, batch: Batch, k: int, exclude_history: bool) -> Tensor:
        return beam_ranks(self.code_decoder(), batch, self.trie, beam_size=k, exclude_history=exclude_history)

    @torch.no_grad()
    def _exact_scores(self, batch: Batch, exclude_history: bool) -> Tensor:
        scores = score_catalog(self.code_decoder(), batch, self.trie).float()  # [B, N]
        return drop_items(scores, batch.history) if exclude_history else scores

    @torch.no_grad()
    def _exact_recommend(self, batch: Batch, k: int, exclude_history: bool) -> tuple[Tensor, Tensor]:
        top, items = self._exact_scores(batch, exclude_history).topk(min(k, self.trie.num_items), dim=1)
        return torch.where(torch.isfinite(top), items, -1), top

    @torch.no_grad()
    def _exact_ranks(self, batch: Batch, k: int, exclude_history: bool) -> Tensor:
        return ranks_in_scores(self._exact_scores(batch, exclude_history), batch.targets, k)
