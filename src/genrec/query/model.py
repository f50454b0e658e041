"""The default query model: frozen sentence-encoder states of a query (its pooled vector and token states) as
the memory of a small transformer decoder that generates an item's semantic ID level by level, searched with
genrec's trie-constrained beam search, so every answer is a catalogue item.

A child code's logit is a learned per-code term plus a content term: the cosine between a projection of the
decoder state and the mean text embedding of the catalogue items under that child (at the last level, the item's
own text embedding), times a learned scale. The content term lets what the sentence encoder knows about words
reach every code from the first step, and lets an item that few queries name still be found by its text. The
softmax runs over a node's children only, in training as in search, so log p(item | query) sums to 1 over the
catalogue.

Shapes: B queries, S memory positions (1 pooled + tokens), E encoder width, D d_model, W beams, M children,
C levels (with the collision level), K_l codes at level l.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.data.batches import Batch
from genrec.ids.trie import Trie
from genrec.models.layers import DecoderLayer
from genrec.query.config import QueryConfig
from genrec.query.encoder import Encoded
from genrec.search.beam import BeamResult, beam_search


class QueryModel(nn.Module):
    def __init__(self, *, cfg: QueryConfig, encoder_dim: int, level_sizes: list[int]) -> None:
        super().__init__()
        D = cfg.d_model
        self.cfg, self.encoder_dim, self.level_sizes = cfg, encoder_dim, list(level_sizes)
        self.offsets = [sum(level_sizes[:i]) for i in range(len(level_sizes))]
        self.in_proj = nn.Sequential(nn.Linear(encoder_dim, D), nn.LayerNorm(D))
        self.code_emb = nn.Embedding(sum(level_sizes), D)
        self.pos = nn.Parameter(torch.randn(len(level_sizes), D) * 0.02)  # BOS + the first C-1 codes
        self.layers = nn.ModuleList(DecoderLayer(d_model=D, num_heads=cfg.num_heads, head_dim=D // cfg.num_heads,
                                                 d_ff=cfg.d_ff, dropout=cfg.dropout) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(D)
        self.heads = nn.ModuleList(nn.Linear(D, k) for k in level_sizes)
        self.to_text = nn.ModuleList(nn.Linear(D, encoder_dim, bias=False) for _ in level_sizes)
        self.text_scale = nn.Parameter(torch.full((len(level_sizes),), math.log(20.0)))
        if cfg.pooled_match != "none":
            self.pooled_scale = nn.Parameter(torch.full((len(level_sizes),), math.log(20.0)))
        self.trie: Trie | None = None
        self.node_text: list[Tensor] = []  # per depth d+1: [N_{d+1}, E] normalised mean text of each node
        self.leaf_text: Tensor | None = None  # [N, E] normalised item text in leaf order
        self.leaf_node: list[Tensor] = []  # per depth d+1: [N] the depth-(d+1) node above each leaf

    def attach(self, trie: Trie, text: Tensor) -> QueryModel:
        """The catalogue to generate: its trie and item text embeddings [N, E] (the embed stage's)."""
        self.trie, self.node_text = trie, []
        leaf_text = F.normalize(text.float(), dim=-1)[trie.leaf_item]  # [N, E] in leaf order
        cs = torch.cat([torch.zeros(1, leaf_text.shape[1]), leaf_text.cumsum(0)])
        self.leaf_text, self.leaf_node = leaf_text, []
        for d in range(1, trie.depth + 1):
            first = trie.first_leaf(d)
            self.node_text.append(F.normalize(cs[first[1:]] - cs[first[:-1]], dim=-1))
            self.leaf_node.append(torch.repeat_interleave(torch.arange(len(first) - 1), first[1:] - first[:-1]))
        return self

    def node_match(self, pooled: Tensor) -> list[Tensor] | None:
        """Per depth d+1, each query's pooled-vector score of every node [B, N_{d+1}] (`query.pooled_match`);
        None without it. pooled [B, E]."""
        mode = self.cfg.pooled_match
        if mode == "none":
            return None
        p = F.normalize(pooled.float(), dim=-1)
        if mode == "mean":
            return [p @ t.T for t in self.node_text]
        cos = p @ self.leaf_text.T  # [B, N] every item, in leaf order
        return [cos.new_full((p.shape[0], len(t)), float("-inf")).scatter_reduce(
            1, idx.expand(p.shape[0], -1), cos, "amax") for idx, t in zip(self.leaf_node, self.node_text)]

    def child_logits(self, h: Tensor, depth: int, child: Tensor, code: Tensor, match: list[Tensor] | None) -> Tensor:
        """Logits [B, (W,) M] of children (depth-(depth+1) node ids `child` [B, (W,) M], their codes `code`) after
        decoder states h [B, (W,) D]; `match` is `node_match` of the B queries."""
        learned = self.heads[depth](h).float().gather(-1, code)
        q = F.normalize(self.to_text[depth](h).float(), dim=-1)  # [..., E]
        out = learned + self.text_scale[depth].exp() * self._node_cos(q, depth, child)
        if match is not None:
            out = out + self.pooled_scale[depth].exp() * match[depth].gather(1, child.flatten(1)).view_as(child)
        return out

    def _node_cos(self, q: Tensor, depth: int, child: Tensor) -> Tensor:
        """q [..., E] (unit) against the text of nodes `child` [..., M] -> [..., M]."""
        nodes = self.node_text[depth]
        if child.numel() * nodes.shape[1] > 4 * nodes.numel():  # cheaper to score every node and pick
            flat = q.reshape(-1, q.shape[-1]) @ nodes.T  # [rows, N_{d+1}]
            return flat.gather(1, child.reshape(flat.shape[0], -1)).view_as(child)
        return (nodes[child] * q.unsqueeze(-2)).sum(-1)

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    def memory(self, enc: Encoded) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
        """Per layer cross-attention keys/values [B, H, S, E'] and the mask [B, 1, 1, S]."""
        x = self.in_proj(enc.states)  # [B, S, D]
        return [layer.cross_attn.project_kv(x) for layer in self.layers], enc.mask[:, None, None, :]

    def hidden(self, kv: list[tuple[Tensor, Tensor]], mask: Tensor, prefix: Tensor) -> Tensor:
        """Decoder states [B, W, d + 1, D] after BOS and the codes `prefix` [B, W, d]."""
        B, W, d = prefix.shape
        x = torch.zeros(B, W, d + 1, self.cfg.d_model, device=prefix.device)
        if d:
            offs = torch.tensor(self.offsets[:d], device=prefix.device)
            x[:, :, 1:] = self.code_emb(prefix + offs)
        x = x + self.pos[: d + 1]
        for layer, (k, v) in zip(self.layers, kv):
            x, _ = layer(x, k, v, mask, None)
        return self.ln_f(x)

    def forward(self, enc: Encoded, items: Tensor) -> Tensor:
        """Teacher-forced cross-entropy of the target items' semantic IDs (items [B] catalogue rows), each level's
        softmax over the children of the item's own prefix; summed over levels, averaged over queries."""
        trie = self.trie
        assert trie is not None, "attach(trie, text) first"
        path = torch.cat([trie.paths(items), trie.item_leaf[items][:, None]], dim=1)  # [B, C + 1] nodes
        sids = torch.stack([trie.node_code[d][path[:, d + 1]] for d in range(trie.depth)], dim=1)  # [B, C]
        kv, mask = self.memory(enc)
        h = self.hidden(kv, mask, sids[:, None, :-1])[:, 0]  # [B, C, D]
        match = self.node_match(enc.states[:, 0])
        loss = h.new_zeros(())
        for d in range(trie.depth):
            child, valid = trie.children(d, path[:, d])  # [B, M]
            logits = self.child_logits(h[:, d], d, child, trie.node_code[d][child], match)
            logits = logits.masked_fill(~valid, -1e9)
            loss = loss + F.cross_entropy(logits, path[:, d + 1] - trie.child_start[d][path[:, d]])
        return loss

    def search(self, enc: Encoded, *, beam_size: int) -> BeamResult:
        """The top `beam_size` catalogue items of each query by trie-constrained beam search (scores are log p of
        the item, normalised over each node's children, so they sum to 1 over the catalogue)."""
        B = enc.states.shape[0]
        batch = Batch(users=torch.zeros(B, dtype=torch.long), history=torch.full((B, 1), -1))
        assert self.trie is not None, "attach(trie, text) first"
        return beam_search(QuerySearch(self, enc), batch, self.trie, beam_size=beam_size)


@dataclass
class _State:
    kv: list[tuple[Tensor, Tensor]]
    mask: Tensor
    match: list[Tensor] | None  # `QueryModel.node_match` of the queries


class QuerySearch:
    """`QueryModel` as the beam search's `CodeDecoder`: memory once per query, the (at most C-token) decoder
    prefix recomputed per level, which costs less than caching at this length."""

    exact_by_beam = False

    def __init__(self, model: QueryModel, enc: Encoded) -> None:
        self.model, self.enc = model, enc

    def start(self, batch: Batch) -> _State:
        return _State(*self.model.memory(self.enc), self.model.node_match(self.enc.states[:, 0]))

    def child_log_probs(self, state: _State, depth: int, nodes: Tensor, prefix: Tensor, code: Tensor, valid: Tensor,
                        live: Tensor) -> tuple[Tensor, Any]:
        h = self.model.hidden(state.kv, state.mask, prefix)[:, :, -1]  # [B, W, D]
        child, _ = self.model.trie.children(depth, nodes)  # [B, W, M]
        logits = self.model.child_logits(h, depth, child, code, state.match)
        return torch.log_softmax(logits.masked_fill(~valid, float("-inf")), -1).masked_fill(~valid, float("-inf")), \
            state

    def select(self, state: _State, parent: Tensor) -> _State:
        return state  # the memory is per query, not per beam

    def keep_users(self, state: _State, keep: Tensor) -> _State:
        match = None if state.match is None else [m[keep] for m in state.match]
        return _State([(k[keep], v[keep]) for k, v in state.kv], state.mask[keep], match)

    def target_log_probs(self, state: _State, targets: Tensor) -> Tensor:
        raise NotImplementedError("query search ranks by beam search only")
