"""Tiger's decoding fast paths: per-node self-attention states, the absorbed cross-attention memory and the
per-depth node tables, against the plain decoder layer and brute-force teacher forcing."""

from __future__ import annotations

import torch

import genrec.models.tiger_decoder as tiger_decoder
from genrec.ids.trie import build_trie
from genrec.models.tiger_decoder import decode_states, node_states, prefix_states
from genrec.search import beam_search

from tiny_tiger import brute_force_scores, random_batch, random_catalog, tiny_model


def test_absorbed_cross_attention_equals_the_decoder_layer():
    """Decoding one layer from node states on the absorbed memory (query and output projections folded into the
    keys and values) gives the decoder layer's own output, with and without the recency bias."""
    sizes = [4, 5, 3]
    codes = random_catalog(30, sizes, seed=7)
    outputs = {}
    for recency in (True, False):
        model = tiny_model(codes, sizes, decoder_layers=1, causal_encoder=True)
        if not recency:
            model.recency_emb = None
        memory = model.encode(random_batch(30, 4, seed=8))
        assert memory.mask.dtype == (torch.float32 if recency else torch.bool)  # an additive bias, or a plain mask
        states = torch.randn(4, 3, 16, generator=torch.Generator().manual_seed(9))
        layer = model.decoder[0]
        want = model.dec_norm(layer.cross_part(states[:, :, None], memory.keys[0], memory.values[0], memory.mask))
        got = decode_states(model, states, memory)
        assert memory.absorbed is not None
        torch.testing.assert_close(got, want[:, :, 0], atol=1e-5, rtol=1e-5)
        rows = torch.tensor([[True, False, True], [False, False, False], [False, True, False], [True, True, True]])
        torch.testing.assert_close(decode_states(model, states, memory, rows), want[:, :, 0][rows], atol=1e-5,
                                   rtol=1e-5)
        outputs[recency] = got
    # the same weights otherwise (same seed): the random recency bias is what changes the output
    assert not torch.allclose(outputs[True], outputs[False], atol=1e-3)


def test_node_states_are_the_prefix_states_and_are_computed_once():
    sizes = [4, 5, 3]
    codes = random_catalog(30, sizes, seed=45)
    model = tiny_model(codes, sizes, decoder_layers=1)
    trie = build_trie(codes)
    nodes = torch.tensor([[0, 2], [1, 1]])
    states = node_states(model, trie, 1, nodes)  # [2, 2, D]
    expected = prefix_states(model, trie.prefix_codes(1, nodes.flatten())).view(2, 2, -1)
    torch.testing.assert_close(states, expected)
    _, table, done = model.__dict__["_node_states"][1]
    assert sorted(done.nonzero().flatten().tolist()) == [0, 1, 2]  # only the nodes asked for
    table[0] = 7.0  # a cached state is reused, not recomputed
    assert (node_states(model, trie, 1, torch.tensor([0])) == 7.0).all()


def test_cacheless_decoding_without_node_tables_matches(monkeypatch):
    """Depths with more nodes than NODE_TABLE_MAX compute the self-attention states per beam instead."""
    sizes = [4, 5, 3]
    codes = random_catalog(40, sizes, seed=41)
    model, batch = tiny_model(codes, sizes, decoder_layers=1), random_batch(40, 6, seed=42)
    trie = build_trie(codes)
    with_tables = beam_search(model.code_decoder(trie), batch, trie, beam_size=12)
    assert sorted(model.__dict__["_node_states"]) == [0, 1, 2]  # a table per depth
    monkeypatch.setattr(tiger_decoder, "NODE_TABLE_MAX", 2)
    model.__dict__.pop("_node_states", None)
    without = beam_search(model.code_decoder(trie), batch, trie, beam_size=12)
    assert sorted(model.__dict__["_node_states"]) == [0]  # only the root's depth still fits a table
    assert torch.equal(with_tables.items, without.items)
    torch.testing.assert_close(with_tables.scores, without.scores, atol=1e-5, rtol=1e-5)


def test_node_states_follow_weight_updates():
    sizes = [4, 5, 3]
    codes = random_catalog(30, sizes, seed=43)
    model, batch = tiny_model(codes, sizes, decoder_layers=1), random_batch(30, 4, seed=44)
    trie = build_trie(codes)
    before = beam_search(model.code_decoder(trie), batch, trie, beam_size=30).scores
    with torch.no_grad():
        model.decoder[0].self_attn.q.weight.mul_(3.0)  # an in-place update, as an optimizer step does
    after = beam_search(model.code_decoder(trie), batch, trie, beam_size=30)
    reference = brute_force_scores(model, batch)
    assert not torch.allclose(before, after.scores)
    torch.testing.assert_close(after.scores, reference.gather(1, after.items), atol=1e-4, rtol=1e-4)
