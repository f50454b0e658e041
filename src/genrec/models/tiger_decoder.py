"""How a Tiger decodes inside trie-constrained search: its `CodeDecoder` (see `genrec.search`).

The state of a search is the encoder memory of each user, shared by all of that user's beams (never copied per
beam), plus, for decoders of two or more layers, a self-attention KV cache per beam. A beam needs a decoder step
only if its node has several children (with `trie_softmax`; an only child has probability 1), and only those
beams are decoded.

One decoder layer needs no cache at all: its self-attention reads only code tokens, so its output at the last
position of a prefix is the same for every user, a property of the trie node. It is computed once per node
when a beam first needs it (kept in a table per depth while the depth has at most NODE_TABLE_MAX nodes), and a
step is then cross-attention and the feed-forward alone, for exactly the beams that need one. Cross-attention
runs on an absorbed memory: the query and output projections folded into each user's keys and values once.

Shapes: B users, W beams, M children slots, t decoder positions, S memory tokens, D d_model, H heads, E head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from genrec.data.batches import Batch
from genrec.ids.trie import Trie
from genrec.models.layers import Memory, softmax
from genrec.models.repeat import child_offsets

if TYPE_CHECKING:
    from genrec.models.tiger import Tiger

NEG_INF = float("-inf")
NODE_TABLE_MAX = 500_000
Cache = list[tuple[Tensor, Tensor]]  # per decoder layer: self-attention keys, values [B*W, H, t, E]


@dataclass
class TigerState:
    memory: Memory  # per user
    cache: Cache | None = None  # every beam's self-attention keys/values of positions < cached
    cached: int = 0
    repeat: list[tuple[Tensor, Tensor]] | None = None  # per user, `Tiger.repeat_nodes` of the history


def _take_rows(cache: Cache, rows: Tensor) -> Cache:
    return [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache]


def _reorder(cache: Cache, parent: Tensor) -> Cache:
    """Gather each user's cache [B*W, H, t, E] by parent beam index [B, W'] -> [B*W', H, t, E]."""
    B = parent.shape[0]
    W = cache[0][0].shape[0] // B
    return _take_rows(cache, (parent + W * torch.arange(B, device=parent.device)[:, None]).flatten())


def prefix_states(model: Tiger, prefixes: Tensor) -> Tensor:
    """prefixes [R, d] -> the (single) decoder layer's state after self-attention at position d: [R, D]."""
    x, _ = model.decoder[0].self_part(model.drop(model.decoder_inputs(prefixes[:, None])), None)
    return x[:, 0, -1]


def node_states(model: Tiger, trie: Trie, depth: int, nodes: Tensor) -> Tensor:
    """Self-attention states of depth-`depth` trie nodes [...] -> [..., D]. Each node's state is computed the
    first time a beam needs it and kept (per depth, while the weights, trie and autocast state are unchanged)."""
    if trie.num_nodes(depth) > NODE_TABLE_MAX:
        return prefix_states(model, trie.prefix_codes(depth, nodes.flatten())).view(*nodes.shape, -1)
    key = (id(trie), tuple((p.data_ptr(), p._version) for p in model.parameters()), model.training,
           torch.is_autocast_enabled(nodes.device.type))
    tables = model.__dict__.setdefault("_node_states", {})
    if depth not in tables or tables[depth][0] != key:
        n = trie.num_nodes(depth)
        tables[depth] = (key, torch.empty(n, model.cfg.d_model, device=nodes.device),
                         torch.zeros(n, dtype=torch.bool, device=nodes.device))
    _, table, done = tables[depth]
    flat = nodes.flatten()
    missing = flat[~done[flat]].unique()
    if missing.numel():
        table[missing] = prefix_states(model, trie.prefix_codes(depth, missing)).float()
        done[missing] = True
    return table[nodes]


def absorb(model: Tiger, memory: Memory) -> tuple[Tensor, Tensor, Tensor]:
    """The first decoder layer's cross-attention keys and values with its query and output projections folded
    in, per user: K' [B, H*S, D] and V' [B, H*S, D] where K'[h, s] = Wq_h^T k_hs / sqrt(E) and
    V'[h, s] = Wo_h v_hs, and the mask as a finite additive float [B, 1, 1 or H, S]. A query x then attends
    with scores x . K'[h, s] = q_h . k_hs / sqrt(E) and output sum_h,s p_hs V'[h, s] = Wo (concat_h
    sum_s p_hs v_hs): the same attention with no per-query projections, as two matmuls per user with one
    [W, D] operand."""
    a = model.decoder[0].cross_attn
    H, E, D = a.h, a.e, model.cfg.d_model
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


def decode_states(model: Tiger, states: Tensor, memory: Memory, rows: Tensor | None = None) -> Tensor:
    """Self-attention states [B, W, D] -> final decoder hidden states [B, W, D] (one decoder layer), or with
    `rows` [B, W] (bool) those rows' only, [n, D]: the feed-forward, the costly part, skips the rest. Outside
    training, cross-attention runs on the absorbed memory (`absorb`)."""
    layer = model.decoder[0]
    if model.training:
        x = layer.cross_part(states[:, :, None], memory.keys[0], memory.values[0], memory.mask)[:, :, 0]
        x = model.dec_norm(x)
        return x if rows is None else x[rows]
    if memory.absorbed is None:
        memory.absorbed = absorb(model, memory)
    keys, values, mask = memory.absorbed  # [B, H*S, D] x 2, [B, 1, 1 or H, S]
    B, W, _ = states.shape
    H = layer.cross_attn.h
    s = torch.matmul(layer.ln2(states), keys.transpose(1, 2)).view(B, W, H, -1)  # [B, W, H, S]
    p = softmax(s + mask).to(values.dtype).view(B, W, -1)  # [B, W, H*S]
    x = states + torch.matmul(p, values)
    if rows is not None:
        x = x[rows]
    return model.dec_norm(x + layer.ff(layer.ln3(x)))


def _subset_log_probs(model: Tiger, d: int, code: Tensor, valid: Tensor, offset: Tensor | None, needs: Tensor,
                      decode: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """log p(child) [B, W, M] where only the beams in `needs` [B, W] are decoded; every other valid child is an
    only child: log 1 = 0. `decode(sel, keep)` decodes beams sel [B, W'] (each user's needed beams first, in
    beam order, then padding) and returns the last hidden states of the kept ones (keep [B, W']), [n, D] in
    row-major order, which is the order of `needs.nonzero()`."""
    logp = torch.zeros(code.shape, device=code.device).masked_fill(~valid, NEG_INF)
    width = int(needs.sum(1).max())
    if width == 0:
        return logp
    sel = torch.sort(needs.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]  # [B, W']
    rows = needs.nonzero(as_tuple=True)  # (user, beam) of each needed beam
    logp[rows] = model.child_log_probs(decode(sel, needs.gather(1, sel)), d, code[rows], valid[rows],
                                       None if offset is None else offset[rows])
    return logp


class TigerDecoder:
    """A Tiger as a `genrec.search.CodeDecoder` over `trie`. `use_kv_cache=False` is the reference path: every
    beam's whole prefix decoded from scratch at every level."""

    def __init__(self, model: Tiger, trie: Trie, *, use_kv_cache: bool = True) -> None:
        self.model, self.trie, self.use_kv_cache = model, trie, use_kv_cache
        self.exact_by_beam = model.cfg.trie_softmax  # only-children cost nothing: keep every node in one beam

    def start(self, batch: Batch) -> TigerState:
        return TigerState(self.model.encode(batch), repeat=self.model.repeat_nodes(
            batch.history[:, -self.model.max_history :], trie=self.trie))

    def offsets(self, state: TigerState, depth: int, nodes: Tensor) -> Tensor | None:
        """The repeat offsets of the children of depth-`depth` nodes [B, W]: [B, W, M], or None."""
        if state.repeat is None:
            return None
        return child_offsets(self.trie, depth, nodes, *state.repeat[depth])

    def child_log_probs(self, state: TigerState, depth: int, nodes: Tensor, prefix: Tensor, code: Tensor,
                        valid: Tensor, live: Tensor) -> tuple[Tensor, TigerState]:
        model, d, memory, cache, cached = self.model, depth, state.memory, state.cache, state.cached
        offset = self.offsets(state, d, nodes)
        if not self.use_kv_cache:
            hidden, _ = model.decode(model.decoder_inputs(prefix, 0), memory)
            return model.child_log_probs(hidden[:, :, -1], d, code, valid, offset), state
        needs = (valid.sum(-1) > 1 if model.cfg.trie_softmax else torch.ones_like(live)) & live
        if len(model.decoder) == 1:
            return _subset_log_probs(model, d, code, valid, offset, needs, lambda sel, keep: decode_states(
                model, node_states(model, self.trie, d, nodes.gather(1, sel)), memory, keep)), state
        if not model.cfg.trie_softmax or 2 * int(needs.sum()) > int(live.sum()):  # decode every beam
            hidden, cache = model.decode(model.decoder_inputs(prefix, cached), memory, cache)
            return model.child_log_probs(hidden[:, :, -1], d, code, valid, offset), \
                replace(state, cache=cache, cached=d + 1)

        def decode(sel: Tensor, keep: Tensor) -> Tensor:  # the needed beams feed positions cached..d
            x = model.decoder_inputs(prefix.gather(1, sel[..., None].expand(-1, -1, d)), cached)
            return model.decode(x, memory, None if cache is None else _reorder(cache, sel))[0][:, :, -1][keep]

        return _subset_log_probs(model, d, code, valid, offset, needs, decode), state

    def select(self, state: TigerState, parent: Tensor) -> TigerState:
        return state if state.cache is None else replace(state, cache=_reorder(state.cache, parent))

    def keep_users(self, state: TigerState, keep: Tensor) -> TigerState:
        m = state.memory
        absorbed = None if m.absorbed is None else tuple(t[keep] for t in m.absorbed)
        memory = Memory([k[keep] for k in m.keys], [v[keep] for v in m.values], m.mask[keep], m.token_item, absorbed)
        cache = state.cache
        if cache is not None:
            W = cache[0][0].shape[0] // keep.shape[0]
            cache = _take_rows(cache, torch.arange(keep.shape[0] * W, device=keep.device).view(-1, W)[keep].flatten())
        repeat = None if state.repeat is None else [(node[keep], off[keep]) for node, off in state.repeat]
        return TigerState(memory, cache, state.cached, repeat)

    def target_log_probs(self, state: TigerState, targets: Tensor) -> Tensor:
        model, trie = self.model, self.trie
        codes = model.item_codes[targets]  # [B, C]
        path = trie.paths(targets)  # [B, C]
        hidden, _ = model.decode(model.decoder_inputs(codes[:, None, :-1]), state.memory)  # [B, 1, C, D]
        total = torch.zeros(targets.shape[0], device=targets.device)
        for d in range(trie.depth):
            child, valid = trie.children(d, path[:, d : d + 1])  # [B, 1, M]
            code = trie.node_code[d][child]
            logp = model.child_log_probs(hidden[:, :, d], d, code, valid, self.offsets(state, d, path[:, d : d + 1]))
            total += logp.masked_fill(~(valid & (code == codes[:, d, None, None])), 0.0).sum((1, 2))
        return total
