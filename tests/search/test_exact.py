"""Exact scoring of the whole catalogue (`score_catalog`), by the depth-first walk and by a catalogue-wide beam,
against brute-force teacher forcing; with a trie softmax the item probabilities sum to one."""

from __future__ import annotations

import pytest
import torch

from genrec.data.batches import Batch
from genrec.ids.trie import build_trie
from genrec.search import score_catalog

from table_decoder import TableDecoder
from tiny_tiger import brute_force_scores, collision_catalog, random_batch, random_catalog, tiny_model


@pytest.mark.parametrize("item_tokens, causal", [("codes", False), ("sum", False), ("codes", True), ("sum", True)])
def test_exact_scoring_equals_teacher_forcing(item_tokens, causal):
    sizes = [4, 5, 3]
    codes = random_catalog(30, sizes, seed=1)
    model, batch = tiny_model(codes, sizes, item_tokens, causal_encoder=causal), random_batch(30, 5, seed=2)
    trie = build_trie(codes)
    decoder = model.code_decoder(trie)
    assert not decoder.exact_by_beam  # the full softmax takes the depth-first walk
    exact = score_catalog(decoder, batch, trie, node_chunk=4)  # small chunks exercise the chunking
    torch.testing.assert_close(exact, brute_force_scores(model, batch), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("decoder_layers", [1, 2])
def test_depth_first_walk_is_the_same_for_every_chunk_size(decoder_layers):
    codes = collision_catalog(60, [3, 5, 4], seed=5, repeats=5)
    sizes = [3, 5, 4, int(codes[:, -1].max()) + 1]
    model, batch = tiny_model(codes, sizes, "sum", decoder_layers=decoder_layers), random_batch(len(codes), 4, seed=6)
    trie = build_trie(codes)
    decoder = model.code_decoder(trie)
    reference = brute_force_scores(model, batch)
    for chunk in (1, 3, 2048):
        torch.testing.assert_close(score_catalog(decoder, batch, trie, node_chunk=chunk), reference,
                                   atol=1e-4, rtol=1e-4)
    # a full softmax over each level's codes leaks mass to codes no item has: the items' total is below one
    total = reference.exp().sum(1)
    assert (total < 0.999).all() and (total > 0).all()


@pytest.mark.parametrize("decoder_layers", [1, 2])
def test_trie_softmax_scores_are_exact_and_sum_to_one(decoder_layers):
    codes = collision_catalog(70, [3, 6, 5], seed=7, repeats=6)
    sizes = [3, 6, 5, int(codes[:, -1].max()) + 1]
    model = tiny_model(codes, sizes, "sum", causal_encoder=True, trie_softmax=True, decoder_layers=decoder_layers)
    batch = random_batch(len(codes), 5, seed=8)
    trie = build_trie(codes)
    decoder = model.code_decoder(trie)
    assert decoder.exact_by_beam  # only-children cost nothing: a catalogue-wide beam
    exact = score_catalog(decoder, batch, trie)
    torch.testing.assert_close(exact, brute_force_scores(model, batch), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(exact.exp().sum(1), torch.ones(5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("exact_by_beam", [False, True])
def test_both_ways_of_scoring_a_table_decoder_equal_its_brute_force(exact_by_beam):
    """The depth-first walk and the catalogue-wide beam give the same exact scores for any CodeDecoder, and
    the walk expands each trie node once."""
    codes = collision_catalog(90, [3, 6, 4], seed=9, repeats=8)
    trie = build_trie(codes)
    decoder = TableDecoder(trie, 6, int(codes.max()) + 1, exact_by_beam=exact_by_beam, seed=3)
    batch = Batch(users=torch.zeros(6, dtype=torch.long), history=torch.zeros(6, 1, dtype=torch.long))
    exact = score_catalog(decoder, batch, trie, node_chunk=5)
    reference = decoder.reference_scores(codes)
    torch.testing.assert_close(exact, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(exact.exp().sum(1), torch.ones(6), atol=1e-5, rtol=1e-5)
    if not exact_by_beam:  # every trie node above the leaves is expanded exactly once, for all users at once
        for d in range(trie.depth):
            nodes = torch.cat([n[0] for depth, n in decoder.visits if depth == d])
            assert sorted(nodes.tolist()) == list(range(trie.num_nodes(d))), d
            assert all(bool((n == n[:1]).all()) for depth, n in decoder.visits)
