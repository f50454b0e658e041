"""The query model under the trie: on a random, untrained model every answer is a catalogue item, a beam as wide
as the catalogue returns every item with log p(item | query) equal to brute-force enumeration of the chained
child softmaxes (summing to 1), and the training loss is exactly -log p of the target as search scores it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from genrec.ids.trie import build_trie
from genrec.query.config import QueryConfig
from genrec.query.encoder import Encoded
from genrec.query.model import QueryModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    sids = np.array(sorted({(a, b, c) for a, b, c in itertools.product(range(4), range(3), range(2))
                            if (a + b + c) % 3}))
    sids = np.concatenate([sids, np.zeros((len(sids), 1), dtype=np.int64)], 1)
    sizes = [4, 3, 2, 1]
    m = QueryModel(cfg=QueryConfig(d_model=16, num_heads=2, d_ff=32, num_layers=2, dropout=0.0, pooled_match="max"), encoder_dim=8,
                   level_sizes=sizes)
    text = torch.randn(len(sids), 8)
    return m.attach(build_trie(sids), text).eval(), sids


def encoded(B: int) -> Encoded:
    torch.manual_seed(1)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return Encoded(torch.randn(B, 5, 8), mask)


def brute_force(m: QueryModel, enc: Encoded, sids: np.ndarray) -> torch.Tensor:
    """log p of every item [B, N]: each level's softmax over the children of the item's own prefix."""
    trie = m.trie
    kv, mask = m.memory(enc)
    B, N = enc.states.shape[0], len(sids)
    out = torch.zeros(B, N)
    for n, sid in enumerate(sids.tolist()):
        path = torch.cat([trie.paths(torch.tensor([n])), trie.item_leaf[[n]][:, None]], 1)[0]
        h = m.hidden(kv, mask, torch.tensor(sid[:-1]).expand(B, 1, -1))[:, 0]  # [B, C, D]
        for d in range(len(sid)):
            child, valid = trie.children(d, path[d].expand(B))
            logits = m.child_logits(h[:, d], d, child, trie.node_code[d][child], m.node_match(enc.states[:, 0]))
            logits = logits.masked_fill(~valid, float("-inf"))
            pos = int(path[d + 1] - trie.child_start[d][path[d]])
            out[:, n] += torch.log_softmax(logits, -1)[:, pos]
    return out


def test_full_beam_equals_brute_force_and_sums_to_one(model):
    m, sids = model
    enc = encoded(3)
    ref = brute_force(m, enc, sids)
    res = m.search(enc, beam_size=len(sids))
    assert sorted(res.items[0].tolist()) == list(range(len(sids)))
    got = torch.full_like(ref, float("nan")).scatter(1, res.items, res.scores)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(ref.exp().sum(1), torch.ones(3), atol=1e-5)
    assert torch.all(res.scores[:, :-1] >= res.scores[:, 1:])


def test_narrow_beam_answers_only_catalogue_items(model):
    m, sids = model
    for beam in (1, 3, 7):
        res = m.search(encoded(4), beam_size=beam)
        assert ((res.items >= 0) & (res.items < len(sids))).all()
        assert all(len(set(r)) == beam for r in res.items.tolist())


def test_training_loss_is_minus_log_p_of_the_target(model):
    m, sids = model
    enc = encoded(3)
    ref = brute_force(m, enc, sids)
    targets = torch.tensor([0, 5, len(sids) - 1])
    for b in range(3):
        loss = m(enc.rows([b]), targets[[b]])
        assert loss.item() == pytest.approx(-ref[b, targets[b]].item(), abs=1e-5)


def test_node_match_is_the_best_item_cosine_under_each_node(model):
    m, sids = model
    pooled = torch.randn(2, 8)
    match = m.node_match(pooled)
    cos = torch.nn.functional.normalize(pooled, dim=-1) @ torch.nn.functional.normalize(m.leaf_text, dim=-1).T
    items = m.trie.leaf_item.tolist()  # leaf -> item
    for d in range(m.trie.depth):
        prefixes = sorted({tuple(sids[i, : d + 1]) for i in range(len(sids))})  # depth-(d+1) nodes in trie order
        for n, prefix in enumerate(prefixes):
            under = [leaf for leaf, i in enumerate(items) if tuple(sids[i, : d + 1]) == prefix]
            assert torch.allclose(match[d][:, n], cos[:, under].max(1).values, atol=1e-6)
