"""TIGER: an encoder-decoder Transformer that generates the next item's semantic ID code by code.

Shapes: B users, T history items, C codes per item (levels incl. the collision level), S encoder tokens,
W beams (or trie nodes) per user, t decoder positions, D d_model, H heads, E head_dim, V code vocabulary.

The encoder reads the user's history (one token per code, as in the paper, or one token per item: the sum of
its code embeddings) plus an optional hashed user token. The decoder starts from BOS and emits one code per
level; level l's logits cover only level l's codes. Decoding shares the encoder memory across beams (no copy
per beam) and keeps a KV cache for decoder self-attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.config import ModelConfig
from genrec.trie import Trie, build_trie


@dataclass
class Batch:
    users: Tensor  # [B] user bucket ids (0 = unknown user)
    history: Tensor  # [B, T] item indices, left-padded with -1 (most recent item last)
    targets: Tensor | None = None  # [B] the item after the history; or [B, T] the item after each history
    #                                 position (-1: none), which needs a causal encoder; None at inference

    def to(self, device: torch.device | str) -> Batch:
        targets = None if self.targets is None else self.targets.to(device)
        return Batch(self.users.to(device), self.history.to(device), targets)


@dataclass
class Output:
    loss: Tensor  # scalar mean cross-entropy over levels
    logits: list[Tensor]  # per level [B, K_l]


@dataclass
class Memory:
    """Encoder output turned into per-layer cross-attention keys and values, computed once per user."""

    keys: list[Tensor]  # per decoder layer [B, H, S, E]
    values: list[Tensor]  # per decoder layer [B, H, S, E]
    mask: Tensor  # [B, 1, 1, S] True where attending is allowed (or [B, 1, W*t, S] per decoder query); with
    #               `recency_bias` a float [B, H, 1 or W*t, S]: the bias where allowed, -inf elsewhere
    token_item: Tensor  # [S] history position of each token (-1: the user token)
    absorbed: tuple[Tensor, Tensor, Tensor] | None = None  # the first decoder layer's cross-attention folded
    #                                                          into its projections (`Tiger.absorb`), made on demand


# Below this many keys, attention runs as two batched matmuls and a softmax: the fused kernel's blocking costs
# 2-4x more than the work at the few-token lengths of item histories and semantic IDs.
SMALL_ATTENTION = 64


def softmax(x: Tensor) -> Tensor:
    """Softmax over the last dimension, in float32. torch's CPU softmax takes a path about 8x slower per element
    when that dimension is below 16, the length of most histories; such rows run as exp / sum instead."""
    x = x.float()
    if x.shape[-1] >= 16:
        return torch.softmax(x, dim=-1)
    e = (x - x.amax(-1, keepdim=True)).exp_()
    return e / e.sum(-1, keepdim=True)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, dropout: float) -> Tensor:
    """Scaled dot-product attention: q [N, H, t, E], k/v [N, H, s, E], mask bool (True: attend) or additive,
    broadcastable to [N, H, t, s]. A query with no allowed key attends uniformly (finite output)."""
    if dropout or k.shape[-2] > SMALL_ATTENTION:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
    s = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # [N, H, t, s]
    if causal:
        mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
    floor = torch.finfo(s.dtype).min  # not -inf, so that a query with no allowed key gets a finite output
    if mask is not None and mask.dtype == torch.bool:
        s = s.masked_fill(~mask, floor)
    elif mask is not None:
        s = (s + mask).clamp(min=floor)
    return torch.matmul(softmax(s).to(v.dtype), v)


class Attention(nn.Module):
    def __init__(self, *, d_model: int, num_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.h, self.e = num_heads, head_dim
        self.q = nn.Linear(d_model, num_heads * head_dim, bias=False)
        self.kv = nn.Linear(d_model, 2 * num_heads * head_dim, bias=False)
        self.o = nn.Linear(num_heads * head_dim, d_model, bias=False)
        self.dropout = dropout

    def split(self, x: Tensor) -> Tensor:  # [N, t, H*E] -> [N, H, t, E]
        return x.unflatten(-1, (self.h, self.e)).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:  # [N, t, D] -> 2 x [N, H, t, E]
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        p = self.dropout if self.training else 0.0
        if mask is not None and mask.dtype != torch.bool and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)  # an additive mask must match the (autocast) query dtype
        out = attention(q, k, v, mask, causal, p)
        return self.o(out.transpose(1, 2).flatten(2))  # [N, t, D]


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = Attention(d_model=cfg.d_model, num_heads=cfg.num_heads, head_dim=cfg.head_dim, dropout=cfg.dropout)
        self.ff = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x [B, S, D], mask [B, 1, 1, S]
        h = self.ln1(x)
        k, v = self.attn.project_kv(h)
        x = x + self.drop(self.attn.attend(self.attn.split(self.attn.q(h)), k, v, mask, causal=False))
        return x + self.drop(self.ff(self.ln2(x)))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(cfg.d_model, cfg.d_ff), nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.drop(F.gelu(self.up(x))))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        kw = dict(d_model=cfg.d_model, num_heads=cfg.num_heads, head_dim=cfg.head_dim, dropout=cfg.dropout)
        self.self_attn, self.cross_attn = Attention(**kw), Attention(**kw)
        self.ff = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, cross_k: Tensor, cross_v: Tensor, mask: Tensor, past: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B, W, t, D] (positions after `past`); cross_k/v [B, H, S, E]; past: self-attention keys/values
        [B*W, H, t_past, E] of the earlier positions."""
        x, kv = self.self_part(x, past)
        return self.cross_part(x, cross_k, cross_v, mask), kv

    def self_part(self, x: Tensor, past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Self-attention over the code positions: x [B, W, t, D] -> x [B, W, t, D] and this layer's keys/values."""
        B, W, t, D = x.shape
        h = self.ln1(x).reshape(B * W, t, D)
        a = self.self_attn
        q = a.split(a.q(h))  # [B*W, H, t, E]
        k, v = a.project_kv(h)
        self_mask = None
        if past is not None:
            p = past[0].shape[2]
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            if t > 1:  # new position i sees the whole past and new positions <= i
                self_mask = torch.arange(p + t, device=x.device)[None] <= p + torch.arange(t, device=x.device)[:, None]
        x = x + self.drop(a.attend(q, k, v, self_mask, causal=past is None and t > 1)).view(B, W, t, D)
        return x, (k, v)

    def cross_part(self, x: Tensor, cross_k: Tensor, cross_v: Tensor, mask: Tensor) -> Tensor:
        """Cross-attention to the user's memory and the feed-forward: x [B, W, t, D] -> [B, W, t, D]. The W*t
        queries of a user share that user's memory, which is never copied per beam."""
        B, W, t, D = x.shape
        c = self.cross_attn
        q = c.split(c.q(self.ln2(x).reshape(B, W * t, D)))  # [B, H, W*t, E]
        x = x + self.drop(c.attend(q, cross_k, cross_v, mask, causal=False)).view(B, W, t, D)
        return x + self.drop(self.ff(self.ln3(x)))


def _masked_cross_entropy(z: Tensor, target: Tensor, mask: Tensor, label_smoothing: float) -> Tensor:
    """Cross-entropy of logits z [n, K] restricted to the codes in mask [n, K] (the target's among them); label
    smoothing spreads over those codes only. A row with a single allowed code contributes zero loss."""
    logp = F.log_softmax(z.masked_fill(~mask, float("-inf")), dim=-1)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    if label_smoothing:
        smooth = -torch.where(mask, logp, 0.0).sum(1) / mask.sum(1)
        nll = (1 - label_smoothing) * nll + label_smoothing * smooth
    return nll.mean()


class Tiger(nn.Module):
    """Encoder-decoder over semantic-ID codes. `level_sizes[l]` codes at level l; `item_codes` [N, C] buffer."""

    method = "generative"  # metric key of this model's ranking (constrained beam search)
    complete_ranking = False  # beam search returns only beam_size items

    def __init__(self, *, cfg: ModelConfig, item_codes: Tensor, level_sizes: list[int], max_history: int) -> None:
        super().__init__()
        self.cfg, self.level_sizes, self.max_history = cfg, list(level_sizes), max_history
        C = len(level_sizes)
        assert item_codes.shape[1] == C
        self.register_buffer("item_codes", item_codes.long(), persistent=True)  # [N, C]
        offsets = torch.tensor([0] + level_sizes[:-1]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)  # [C] first token id of each level
        V, D = sum(level_sizes), cfg.d_model
        self.code_emb = nn.Embedding(V + 1, D)  # last row: BOS for the decoder
        self.user_emb = nn.Embedding(cfg.num_user_buckets + 1, D) if cfg.num_user_buckets else None
        per_item = C if cfg.item_tokens == "codes" else 1
        self.enc_pos = nn.Embedding(max_history * per_item + 1, D)  # counted from the most recent token
        self.dec_pos = nn.Embedding(C, D)
        # cross-attention bias per head by item recency: 0 = the query's most recent item, ..., max_history = user
        self.recency_emb = nn.Embedding(max_history + 1, cfg.num_heads) if cfg.recency_bias else None
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(D), nn.LayerNorm(D)
        self.head = nn.Linear(D, V, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.apply(self._init)
        if self.recency_emb is not None:
            nn.init.zeros_(self.recency_emb.weight)  # starts as plain attention

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
        memory = Memory(list(keys), list(values), key_mask, token_item)
        if self.recency_emb is not None and not (batch.targets is not None and batch.targets.ndim == 2):
            last = (valid * torch.arange(T, device=x.device)).amax(1)  # [B] index of the most recent item
            memory.mask = self.cross_mask(key_mask, last[:, None], token_item)  # [B, H, 1, S]
        return memory

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

    # ---- decoding without a KV cache (one decoder layer) -----------------------------------------------------
    # With a single decoder layer, self-attention reads only the code tokens, so its output at the last position
    # of a prefix is the same for every user: a property of the trie node. It is computed once per node, when a
    # beam first needs it (kept in a table per depth while the depth has at most NODE_TABLE_MAX nodes), and a
    # decoding step is then cross-attention and the feed-forward alone, for any subset of beams, with no cache
    # to gather or grow.
    NODE_TABLE_MAX = 500_000

    @property
    def cacheless(self) -> bool:
        return len(self.decoder) == 1

    def prefix_states(self, prefixes: Tensor) -> Tensor:
        """prefixes [R, d] -> the decoder layer's state after self-attention at position d: [R, D]."""
        x, _ = self.decoder[0].self_part(self.drop(self.decoder_inputs(prefixes[:, None])), None)
        return x[:, 0, -1]

    def node_states(self, trie: Trie, depth: int, nodes: Tensor) -> Tensor:
        """Self-attention states of depth-`depth` trie nodes [...] -> [..., D]. Each node's state is computed the
        first time a beam needs it and kept (per depth, while the weights, trie and autocast state are unchanged)."""
        if trie.num_nodes(depth) > self.NODE_TABLE_MAX:
            return self.prefix_states(trie.prefix_codes(depth, nodes.flatten())).view(*nodes.shape, -1)
        key = (id(trie), tuple((p.data_ptr(), p._version) for p in self.parameters()), self.training,
               torch.is_autocast_enabled(nodes.device.type))
        tables = self.__dict__.setdefault("_node_states", {})
        if depth not in tables or tables[depth][0] != key:
            n = trie.num_nodes(depth)
            tables[depth] = (key, torch.empty(n, self.cfg.d_model, device=nodes.device),
                             torch.zeros(n, dtype=torch.bool, device=nodes.device))
        _, table, done = tables[depth]
        flat = nodes.flatten()
        missing = flat[~done[flat]].unique()
        if missing.numel():
            table[missing] = self.prefix_states(trie.prefix_codes(depth, missing)).float()
            done[missing] = True
        return table[nodes]

    def absorb(self, memory: Memory) -> tuple[Tensor, Tensor, Tensor]:
        """The first decoder layer's cross-attention keys and values with its query and output projections folded
        in, per user: K' [B, H*S, D] and V' [B, H*S, D] where K'[h, s] = Wq_h^T k_hs / sqrt(E) and
        V'[h, s] = Wo_h v_hs, and the mask as a finite additive float [B, 1, 1 or H, S]. A query x then attends
        with scores x . K'[h, s] = q_h . k_hs / sqrt(E) and output sum_h,s p_hs V'[h, s] = Wo (concat_h
        sum_s p_hs v_hs): the same attention with no per-query projections, as two matmuls per user with one
        [W, D] operand."""
        a = self.decoder[0].cross_attn
        H, E, D = a.h, a.e, self.cfg.d_model
        k, v = memory.keys[0], memory.values[0]  # [B, H, S, E]
        B, S = k.shape[0], k.shape[2]
        wq = a.q.weight.view(H, E, D) * E**-0.5  # q_h = Wq_h x
        wo = a.o.weight.view(D, H, E).permute(1, 2, 0)  # [H, E, D]: out = sum_h Wo_h o_h

        def fold(x: Tensor, w: Tensor) -> Tensor:  # [B, H, S, E] x [H, E, D] -> [B, H*S, D], one matmul per head
            y = torch.bmm(x.transpose(0, 1).reshape(H, B * S, E), w.to(x.dtype))  # [H, B*S, D]
            return y.view(H, B, S, D).transpose(0, 1).reshape(B, H * S, D)

        mask = memory.mask.transpose(1, 2)  # [B, 1 or H, 1, S] -> [B, 1, 1 or H, S]
        mask = torch.where(mask, 0.0, float("-inf")) if mask.dtype == torch.bool else mask.float()
        # a finite floor: a query with nowhere to attend gets a uniform (finite) mix instead of NaN
        return fold(k, wq), fold(v, wo), mask.clamp(min=-1e30)

    def decode_states(self, states: Tensor, memory: Memory, rows: Tensor | None = None) -> Tensor:
        """Self-attention states [B, W, D] -> final decoder hidden states [B, W, D] (one decoder layer), or with
        `rows` [B, W] (bool) those rows' only, [n, D]: the feed-forward, the costly part, skips the rest. Outside
        training, cross-attention runs on the absorbed memory (`absorb`)."""
        layer = self.decoder[0]
        if self.training:
            x = layer.cross_part(states[:, :, None], memory.keys[0], memory.values[0], memory.mask)[:, :, 0]
            x = self.dec_norm(x)
            return x if rows is None else x[rows]
        if memory.absorbed is None:
            memory.absorbed = self.absorb(memory)
        keys, values, mask = memory.absorbed  # [B, H*S, D] x 2, [B, 1, 1 or H, S]
        B, W, _ = states.shape
        H = layer.cross_attn.h
        s = torch.matmul(layer.ln2(states), keys.transpose(1, 2)).view(B, W, H, -1)  # [B, W, H, S]
        p = softmax(s + mask).to(values.dtype).view(B, W, -1)  # [B, W, H*S]
        x = states + torch.matmul(p, values)
        if rows is not None:
            x = x[rows]
        return self.dec_norm(x + layer.ff(layer.ln3(x)))

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

    def child_log_probs(self, hidden: Tensor, level: int, code: Tensor, valid: Tensor) -> Tensor:
        """hidden [..., D], the codes of each node's children [..., M] (valid [..., M]) -> their log-probabilities
        [..., M]: under the full softmax over level `level`'s codes, or with `trie_softmax` over the valid
        children only. Invalid slots are -inf."""
        if not self.cfg.trie_softmax:
            return self.log_probs(hidden, level).gather(-1, code).masked_fill(~valid, float("-inf"))
        lo = int(self.offsets[level])
        z = (hidden @ self.head.weight[lo : lo + self.level_sizes[level]].T).float().gather(-1, code)  # [..., M]
        return F.log_softmax(z.masked_fill(~valid, float("-inf")), dim=-1).masked_fill(~valid, float("-inf"))

    def code_distributions(self, item_probs: Tensor, targets: Tensor) -> list[Tensor]:
        """A distribution over items [n, N] and target items [n] -> per level l, the distribution over level
        l's codes [n, K_l] of an item drawn from it, given that it starts with the target's first l codes:
        q_l(k) = sum of p(i) over items i with codes[:l] = the target's and code k at level l, normalised.
        Rows whose prefix has no mass are all zero.

        Level 0 sums the whole catalogue by code. Below it, the items under the target's prefix are a contiguous
        run of the trie's leaf order, at most as long as the largest subtree of that depth, so each child's mass
        is a difference of one running sum over that short window."""
        trie, device = self.trie, item_probs.device
        n, N = item_probs.shape
        first_leaf = self.__dict__.get("_first_leaf")  # per depth: each node's first leaf in leaf order, + the end
        if first_leaf is None or first_leaf[0].device != device or first_leaf[-1].numel() != N + 1:
            first_leaf = [torch.arange(N + 1, device=device)]
            for d in range(self.num_levels - 1, -1, -1):
                first_leaf.insert(0, first_leaf[0][trie.child_start[d]])
            self.__dict__["_first_leaf"] = first_leaf
        mass0 = torch.zeros(n, self.level_sizes[0], device=device).index_add_(1, self.item_codes[:, 0], item_probs)
        out = [mass0 / mass0.sum(1, keepdim=True).clamp(min=1e-30)]
        paths = trie.paths(targets)  # [n, C]
        for level in range(1, self.num_levels):
            start = first_leaf[level][paths[:, level]]  # [n] the prefix's leaves are start : end
            end = first_leaf[level][paths[:, level] + 1]
            width = int((first_leaf[level][1:] - first_leaf[level][:-1]).max())
            leaf = start[:, None] + torch.arange(width, device=device)  # [n, W]
            inside = leaf < end[:, None]
            window = item_probs.gather(1, trie.leaf_item[leaf.clamp(max=N - 1)]).masked_fill(~inside, 0.0)
            cum = F.pad(window.cumsum(1, dtype=torch.float64), (1, 0))  # [n, W + 1]
            child, valid = trie.children(level, paths[:, level])  # [n, M]
            lo = (first_leaf[level + 1][child] - start[:, None]).clamp(0, width)
            hi = (first_leaf[level + 1][child + 1] - start[:, None]).clamp(0, width)
            mass = torch.where(valid, cum.gather(1, hi) - cum.gather(1, lo), 0.0)
            mass = mass / mass.sum(1, keepdim=True).clamp(min=1e-300)
            K = self.level_sizes[level]
            q = torch.zeros(n, K + 1, dtype=torch.float64, device=device)
            q.scatter_(1, torch.where(valid, trie.node_code[level][child], K), mass)
            out.append(q[:, :K].float())
        return out

    def forward(self, batch: Batch, label_smoothing: float = 0.0, teacher: Tensor | None = None,
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
        soft = self.code_distributions(teacher, targets[live]) if teacher is not None and distill > 0 else None
        logits, losses = [], []
        for level in range(C):
            lo = int(self.offsets[level])
            z = hidden[:, level] @ self.head.weight[lo : lo + self.level_sizes[level]].T  # [n, K_l]
            logits.append(z)
            mask = None if paths is None else self.trie.child_mask(level, paths[:, level], self.level_sizes[level])
            if mask is None:
                loss = F.cross_entropy(z.float(), codes[:, level], label_smoothing=label_smoothing)
            else:
                loss = _masked_cross_entropy(z.float(), codes[:, level], mask, label_smoothing)
            if soft is not None:
                logp = F.log_softmax(z.float() if mask is None else z.float().masked_fill(~mask, float("-inf")), -1)
                q = soft[level]  # zero wherever the model's softmax is masked (no item there)
                kl = (torch.xlogy(q, q) - q * logp.masked_fill(q == 0, 0.0)).sum(1).mean()
                loss = (1 - distill) * loss + distill * kl
            losses.append(loss)
        return Output(loss=torch.stack(losses).mean(), logits=logits)

    @torch.no_grad()
    def recommend(self, batch: Batch, k: int, exclude_history: bool = False) -> tuple[Tensor, Tensor]:
        """Top-k catalogue items by constrained beam search (beam = k): (item_ids [B, k], scores [B, k])."""
        from genrec.decode import beam_search

        result = beam_search(self, batch, self.trie, beam_size=k, exclude_history=exclude_history)
        return result.items, result.scores

    @torch.no_grad()
    def target_ranks(self, batch: Batch, k: int, exclude_history: bool = False) -> Tensor:
        """0-based rank of each target among the k items `recommend` returns, MISS if absent: [B]."""
        from genrec.decode import beam_ranks

        return beam_ranks(self, batch, self.trie, beam_size=k, exclude_history=exclude_history)
