"""Transformer layers shared by the models: attention tuned for the few-token sequences of item histories and
semantic IDs, and pre-LN encoder and decoder blocks.

Shapes: N rows (users, or users x beams), H heads, t queries, s keys, E head_dim, D d_model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Memory:
    """Encoder output turned into per-layer cross-attention keys and values, computed once per user."""

    keys: list[Tensor]  # per decoder layer [B, H, S, E]
    values: list[Tensor]  # per decoder layer [B, H, S, E]
    mask: Tensor  # [B, 1, 1, S] True where attending is allowed (or [B, 1, W*t, S] per decoder query); with
    #               `recency_bias` a float [B, H, 1 or W*t, S]: the bias where allowed, -inf elsewhere
    token_item: Tensor  # [S] history position of each token (-1: the user token)
    absorbed: tuple[Tensor, Tensor, Tensor] | None = None  # the first decoder layer's cross-attention folded
    #                                                          into its projections (`tiger_decoder.absorb`), made on demand
    states: Tensor | None = None  # [B, S, D] the encoder's output itself (what a dense head reads)


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
    """Pre-LN self-attention and feed-forward block."""

    def __init__(self, *, d_model: int, num_heads: int, head_dim: int, d_ff: int, dropout: float,
                 attention_dropout: float | None = None) -> None:
        """attention_dropout: on the attention weights (None: `dropout`)."""
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model=d_model, num_heads=num_heads, head_dim=head_dim,
                              dropout=dropout if attention_dropout is None else attention_dropout)
        self.ff = FeedForward(d_model=d_model, d_ff=d_ff, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x [B, S, D], mask [B, 1, 1, S]
        h = self.ln1(x)
        k, v = self.attn.project_kv(h)
        x = x + self.drop(self.attn.attend(self.attn.split(self.attn.q(h)), k, v, mask, causal=False))
        return x + self.drop(self.ff(self.ln2(x)))


class FeedForward(nn.Module):
    def __init__(self, *, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.drop(F.gelu(self.up(x))))


class DecoderLayer(nn.Module):
    """Pre-LN self-attention over code positions, cross-attention to the encoder memory, feed-forward."""

    def __init__(self, *, d_model: int, num_heads: int, head_dim: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.self_attn = Attention(d_model=d_model, num_heads=num_heads, head_dim=head_dim, dropout=dropout)
        self.cross_attn = Attention(d_model=d_model, num_heads=num_heads, head_dim=head_dim, dropout=dropout)
        self.ff = FeedForward(d_model=d_model, d_ff=d_ff, dropout=dropout)
        self.drop = nn.Dropout(dropout)

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
