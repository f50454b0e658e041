"""Constrained beam search and the rank of a target in its list, against brute-force references: a Tiger's
teacher-forced log-probabilities, item by item, and a table decoder that is not a Tiger at all."""

from __future__ import annotations

import pytest
import torch

from genrec.data.batches import Batch
from genrec.evaluation.metrics import ranks_in_list
from genrec.ids.trie import build_trie
from genrec.search import MISS, beam_ranks, beam_search, score_catalog

from table_decoder import TableDecoder
from tiny_tiger import brute_force_scores, collision_catalog, random_batch, random_catalog, tiny_model, with_targets


@pytest.mark.parametrize("use_kv_cache, decoder_layers", [(True, 2), (False, 2), (True, 1)])
def test_full_beam_is_the_exact_ranking(use_kv_cache, decoder_layers):
    sizes = [4, 5, 3]
    codes = random_catalog(40, sizes, seed=3)
    model, batch = tiny_model(codes, sizes, decoder_layers=decoder_layers), random_batch(40, 6, seed=4)
    trie = build_trie(codes)
    result = beam_search(model.code_decoder(trie, use_kv_cache=use_kv_cache), batch, trie, beam_size=40)
    reference = brute_force_scores(model, batch)
    ref_scores, ref_items = reference.sort(dim=1, descending=True)
    assert torch.equal(result.items, ref_items)
    torch.testing.assert_close(result.scores, ref_scores, atol=1e-4, rtol=1e-4)


def test_small_beam_returns_valid_sorted_items():
    sizes = [4, 6, 4]
    codes = random_catalog(60, sizes, seed=5)
    model, batch = tiny_model(codes, sizes), random_batch(60, 8, seed=6)
    trie = build_trie(codes)
    reference = brute_force_scores(model, batch)
    for beam in (1, 3, 10):
        result = beam_search(model.code_decoder(trie), batch, trie, beam_size=beam)
        assert (result.items >= 0).all() and (result.items < 60).all()
        assert trie.contains(model.item_codes[result.items.flatten()]).all()
        assert (result.scores[:, :-1] >= result.scores[:, 1:]).all()
        # every returned score is that item's true log-probability
        torch.testing.assert_close(result.scores, reference.gather(1, result.items), atol=1e-4, rtol=1e-4)
        assert all(len(set(row.tolist())) == beam for row in result.items)
    # a beam of one is greedy decoding: the most likely valid code at each level, given the codes chosen so far
    ids = [tuple(row) for row in codes.tolist()]
    greedy = beam_search(model.code_decoder(trie), batch, trie, beam_size=1).items[:, 0]
    for b in range(8):
        prefix: tuple[int, ...] = ()
        for level in range(3):
            children = sorted({i[level] for i in ids if i[:level] == prefix})
            item = next(n for n, i in enumerate(ids) if i[:level] == prefix)  # any item teacher-forces the prefix
            with torch.no_grad():
                z = model(Batch(batch.users[b : b + 1], batch.history[b : b + 1], torch.tensor([item]))).logits[level]
            prefix += (max(children, key=lambda c: float(z[0, c])),)
        assert ids[int(greedy[b])] == prefix


def test_kv_cache_and_cacheless_search_agree_at_every_beam():
    """The cached path (one decoder step per level, cache reordered by parent beam) against decoding every
    beam's whole prefix from scratch, at narrow beams where reordering matters."""
    codes = collision_catalog(90, [4, 6, 5], seed=17, repeats=8)
    sizes = [4, 6, 5, int(codes[:, -1].max()) + 1]
    trie = build_trie(codes)
    batch = random_batch(len(codes), 6, seed=18)
    for trie_softmax in (False, True):
        model = tiny_model(codes, sizes, "sum", causal_encoder=True, trie_softmax=trie_softmax, decoder_layers=2)
        for beam in (1, 2, 7, 30):
            cached = beam_search(model.code_decoder(trie, use_kv_cache=True), batch, trie, beam_size=beam)
            fresh = beam_search(model.code_decoder(trie, use_kv_cache=False), batch, trie, beam_size=beam)
            assert torch.equal(cached.items, fresh.items), (trie_softmax, beam)
            torch.testing.assert_close(cached.scores, fresh.scores, atol=1e-5, rtol=1e-5)


def test_exclude_history_drops_history_items():
    sizes = [4, 5, 3]
    codes = random_catalog(30, sizes, seed=9)
    model, batch = tiny_model(codes, sizes), random_batch(30, 5, seed=10)
    trie = build_trie(codes)
    result = beam_search(model.code_decoder(trie), batch, trie, beam_size=30, exclude_history=True)
    reference = brute_force_scores(model, batch)
    for b, (row, hist) in enumerate(zip(result.items.tolist(), batch.history.tolist())):
        kept = [i for i in row if i >= 0]
        assert not set(kept) & set(hist)
        assert len(kept) == 30 - len({h for h in hist if h >= 0})
        expected = [i for i in reference[b].sort(descending=True).indices.tolist() if i not in hist]
        assert kept == expected  # the full ranking, minus the history, in order


def test_beam_larger_than_catalog_pads_with_minus_one():
    sizes = [3, 3, 2]
    codes = random_catalog(7, sizes, seed=11)
    model, batch = tiny_model(codes, sizes), random_batch(7, 2, seed=12)
    trie = build_trie(codes)
    result = beam_search(model.code_decoder(trie), batch, trie, beam_size=10)
    assert result.items.shape == result.scores.shape == (2, 10)
    assert (result.items[:, :7] >= 0).all() and (result.items[:, 7:] == -1).all()
    assert (result.scores[:, 7:] == float("-inf")).all() and torch.isfinite(result.scores[:, :7]).all()


@pytest.mark.parametrize("users", [7, 0])
@pytest.mark.parametrize("use_kv_cache, decoder_layers", [(True, 2), (False, 2), (True, 1)])
@pytest.mark.parametrize("catalog", [([3, 6, 5], 70, 0), ([3, 30, 30], 50, 12)])
def test_trie_softmax_full_beam_is_the_exact_ranking_and_a_distribution(use_kv_cache, decoder_layers, catalog, users):
    """With trie_softmax a node with one child is never decoded and the beams that need a step feed their
    pending positions against the shared cache (the second catalogue: level-2 nodes mostly have one child, so
    a collision at level 3 decodes positions 2 and 3 at once); the result must still equal per-item teacher
    forcing, and the item probabilities sum to one."""
    level_sizes, n, repeats = catalog
    codes = collision_catalog(n, level_sizes, seed=21, repeats=repeats)
    sizes = [*level_sizes, int(codes[:, -1].max()) + 1]
    N = codes.shape[0]
    trie = build_trie(codes)
    for causal in (False, True):
        model = tiny_model(codes, sizes, "sum", causal_encoder=causal, trie_softmax=True, decoder_layers=decoder_layers,
                           num_user_buckets=users)
        decoder = model.code_decoder(trie, use_kv_cache=use_kv_cache)
        batch = random_batch(N, 5, seed=22)
        reference = brute_force_scores(model, batch)
        torch.testing.assert_close(reference.exp().sum(1), torch.ones(5), atol=1e-5, rtol=1e-5)
        result = beam_search(decoder, batch, trie, beam_size=N)
        ref_scores, ref_items = reference.sort(dim=1, descending=True)
        assert torch.equal(result.items, ref_items)
        torch.testing.assert_close(result.scores, ref_scores, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(score_catalog(decoder, batch, trie), reference, atol=1e-4, rtol=1e-4)
        for beam in (1, 4, 15):  # narrow beams: valid items, true scores, sorted
            small = beam_search(decoder, batch, trie, beam_size=beam)
            torch.testing.assert_close(small.scores, reference.gather(1, small.items), atol=1e-4, rtol=1e-4)
            assert (small.scores[:, :-1] >= small.scores[:, 1:]).all()


def test_bfloat16_decoding_returns_valid_items_with_close_scores():
    sizes = [4, 5, 3]
    codes = random_catalog(30, sizes, seed=14)
    model, batch = tiny_model(codes, sizes), random_batch(30, 5, seed=15)
    trie = build_trie(codes)
    reference = brute_force_scores(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = beam_search(model.code_decoder(trie), batch, trie, beam_size=30)
    assert result.scores.dtype == torch.float32
    assert all(sorted(row) == list(range(30)) for row in result.items.tolist())  # every item, once
    torch.testing.assert_close(result.scores, reference.gather(1, result.items), atol=0.1, rtol=0.02)


@pytest.mark.parametrize("decoder_layers", [1, 2])
@pytest.mark.parametrize("trie_softmax", [False, True])
def test_beam_ranks_equal_looking_the_target_up_in_the_beam(trie_softmax, decoder_layers):
    """The pruned rank computation (users dropped once their target's prefix leaves the beam, candidates below
    the target's score dropped) must give exactly the rank of the target in beam_search's output."""
    codes = collision_catalog(120, [4, 8, 6], seed=31, repeats=10)
    sizes = [4, 8, 6, int(codes[:, -1].max()) + 1]
    N = codes.shape[0]
    model = tiny_model(codes, sizes, "sum", causal_encoder=True, trie_softmax=trie_softmax, decoder_layers=decoder_layers)
    trie = build_trie(codes)
    decoder = model.code_decoder(trie)
    batch = random_batch(N, 64, seed=32)
    targets = torch.randint(0, N, (64,), generator=torch.Generator().manual_seed(33))
    targets[:4] = batch.history[:4, -1]  # some targets are history items
    batch = with_targets(batch, targets)
    for beam in (1, 3, 10, 40, N):
        for exclude in (False, True):
            result = beam_search(decoder, batch, trie, beam_size=beam, exclude_history=exclude)
            expected = ranks_in_list(result.items, targets)
            assert torch.equal(beam_ranks(decoder, batch, trie, beam_size=beam, exclude_history=exclude), expected)
    # the test must be able to fail: some targets are found, some missed, at a middling beam
    ranks = beam_ranks(decoder, batch, trie, beam_size=10)
    assert 0 < int((ranks < 10).sum()) < 64
    # a target in the history is a miss once the history is excluded
    assert (beam_ranks(decoder, batch, trie, beam_size=N, exclude_history=True)[:4] == MISS).all()


# ---------------------------------------------------------------------------------------------- any CodeDecoder


@pytest.mark.parametrize("seed", [0, 1])
def test_search_over_a_table_decoder_equals_its_brute_force_scores(seed):
    """Search reaches the model only through the CodeDecoder protocol: with a decoder that is a table of
    log-probabilities the full beam is the table's exact ranking, a narrow beam returns true scores, sorted,
    and beam_ranks is the target's place in the beam's list."""
    codes = collision_catalog(80, [3, 5, 4], seed=40 + seed, repeats=6)
    trie = build_trie(codes)
    N, B = codes.shape[0], 9
    decoder = TableDecoder(trie, B, int(codes.max()) + 1, exact_by_beam=True, seed=seed)
    reference = decoder.reference_scores(codes)  # [B, N]
    torch.testing.assert_close(reference.exp().sum(1), torch.ones(B), atol=1e-5, rtol=1e-5)
    batch = Batch(users=torch.zeros(B, dtype=torch.long), history=torch.randint(0, N, (B, 3)))
    full = beam_search(decoder, batch, trie, beam_size=N)
    ref_scores, ref_items = reference.sort(dim=1, descending=True)
    assert torch.equal(full.items, ref_items)
    torch.testing.assert_close(full.scores, ref_scores, atol=1e-5, rtol=1e-5)
    targets = torch.randint(0, N, (B,), generator=torch.Generator().manual_seed(seed))
    batch = with_targets(batch, targets)
    torch.testing.assert_close(decoder.target_log_probs(decoder.start(batch), targets),
                               reference.gather(1, targets[:, None])[:, 0], atol=1e-5, rtol=1e-5)
    for beam in (1, 5, 20):
        for exclude in (False, True):
            small = beam_search(decoder, batch, trie, beam_size=beam, exclude_history=exclude)
            live = small.items >= 0
            torch.testing.assert_close(small.scores[live], reference.gather(1, small.items.clamp(min=0))[live],
                                       atol=1e-5, rtol=1e-5)
            assert (small.scores[:, :-1] >= small.scores[:, 1:]).all()
            if exclude:
                assert not any(set(r.tolist()) & set(h.tolist()) for r, h in zip(small.items, batch.history))
            ranks = beam_ranks(decoder, batch, trie, beam_size=beam, exclude_history=exclude)
            assert torch.equal(ranks, ranks_in_list(small.items, targets))
