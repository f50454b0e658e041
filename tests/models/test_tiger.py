"""Tiger: one-pass training equals one example per target, the trie-softmax loss, distillation and the teacher's
code distributions, cached decoding, and its two ranking methods, all against references computed by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from genrec.data.batches import Batch, TrainExamples, TrainWindows
from genrec.ids.catalog import Catalog
from genrec.ids.trie import build_trie
from genrec.models.tiger import Tiger
from genrec.search import MISS, beam_search, ranks_in_scores

from tiny_tiger import (allowed_codes, brute_force_scores, collision_catalog, random_batch, random_catalog,
                        tiny_config, tiny_model, with_targets)


def test_one_pass_training_equals_one_example_per_target():
    """A causal encoder trains all targets of a window in one pass: the loss equals the mean of the
    per-target losses computed one (truncated history, target) example at a time."""
    sizes = [4, 5, 3]
    codes = random_catalog(30, sizes, seed=13)
    torch.manual_seed(0)
    cfg = tiny_config(causal_encoder=True, decoder_layers=1, encoder_layers=2)
    for item_tokens, num_user_buckets in (("codes", 5), ("sum", 5), ("sum", 0)):
        model = Tiger(cfg=dataclasses.replace(cfg, item_tokens=item_tokens, num_user_buckets=num_user_buckets),
                      item_codes=torch.from_numpy(codes), level_sizes=sizes, max_history=6)
        torch.nn.init.normal_(model.recency_emb.weight)  # zero at init; the per-target recency must line up too
        rng = np.random.default_rng(1)
        train = [rng.choice(30, size=n, replace=False) for n in (2, 5, 7, 3)]  # all fit one window (<= 7 items)
        users = np.array([1, 2, 3, 4])
        windows, examples = TrainWindows(train, users, 6), TrainExamples(train, users, 6)
        assert windows.targets == len(examples) == 1 + 4 + 6 + 2
        one_pass = model(windows.batch(np.arange(len(windows)))).loss
        per_example = [model(examples.batch(np.array([i]))).loss for i in range(len(examples))]
        torch.testing.assert_close(one_pass, torch.stack(per_example).mean(), atol=1e-5, rtol=1e-5)


def test_trie_softmax_training_loss_is_the_masked_cross_entropy():
    codes = collision_catalog(50, [3, 5, 4], seed=23)
    sizes = [3, 5, 4, int(codes[:, -1].max()) + 1]
    model = tiny_model(codes, sizes, "codes", trie_softmax=True)
    batch = random_batch(50, 6, seed=24)
    targets = torch.tensor([0, 7, 13, 21, 34, 49])
    reference = brute_force_scores(model, batch)  # [B, N]: the summed masked log-probabilities
    loss = model(with_targets(batch, targets)).loss  # mean over levels of the mean over users
    expected = -reference[torch.arange(6), targets].mean() / len(sizes)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    # label smoothing spreads only over the allowed codes (found here by scanning the ID list)
    out = model(with_targets(batch, targets), label_smoothing=0.1)
    ids = [tuple(row) for row in codes.tolist()]
    expected_levels = []
    for level, z in enumerate(out.logits):
        terms = []
        for b, item in enumerate(targets.tolist()):
            allowed = allowed_codes(ids, item, level)
            logp = torch.log_softmax(z[b, allowed], -1)
            terms.append(-0.9 * logp[allowed.index(ids[item][level])] - 0.1 * logp.mean())
        expected_levels.append(torch.stack(terms).mean())
    torch.testing.assert_close(out.loss, torch.stack(expected_levels).mean(), atol=1e-5, rtol=1e-5)


def test_code_distributions_sum_the_teacher_over_each_prefix():
    codes = collision_catalog(40, [3, 4, 3], seed=31)
    sizes = [3, 4, 3, int(codes[:, -1].max()) + 1]
    model = tiny_model(codes, sizes, "sum", trie_softmax=True)
    probs = torch.softmax(torch.randn(5, 40, generator=torch.Generator().manual_seed(32)) * 2, dim=1)
    probs[1, 7] = 0.0  # a row whose target has no mass of its own: its prefixes still have some
    probs[1] /= probs[1].sum()
    targets = torch.tensor([0, 7, 19, 33, 39])
    out = model.code_distributions(probs, targets)
    for b, item in enumerate(targets.tolist()):
        for level, q in enumerate(out):
            expected = torch.zeros(sizes[level])
            for i, row in enumerate(codes.tolist()):  # items under the target's first `level` codes
                if row[:level] == codes[item][:level].tolist():
                    expected[row[level]] += probs[b, i]
            torch.testing.assert_close(q[b], expected / expected.sum(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("trie_softmax", [False, True])
def test_distillation_from_a_one_hot_teacher_is_the_plain_loss(trie_softmax):
    """q_l is then one-hot on the true code at every level, so KL(q || p) = -log p(true code)."""
    codes = collision_catalog(40, [3, 4, 3], seed=33)
    sizes = [3, 4, 3, int(codes[:, -1].max()) + 1]
    model = tiny_model(codes, sizes, "sum", causal_encoder=True, trie_softmax=trie_softmax)
    batch = with_targets(random_batch(40, 6, seed=34), torch.tensor([0, 7, 19, 33, 39, 5]))
    plain = model(batch).loss
    one_hot = torch.nn.functional.one_hot(batch.targets, 40).float()
    for weight in (0.3, 1.0):
        torch.testing.assert_close(model(batch, teacher=one_hot, distill=weight).loss, plain, atol=1e-5, rtol=1e-5)
    # a spread-out teacher: at weight 1 the loss is the mean over levels of KL(q_l || p_l), checked by hand
    teacher = torch.softmax(torch.randn(6, 40, generator=torch.Generator().manual_seed(35)), dim=1)
    out = model(batch, teacher=teacher, distill=1.0)
    soft = model.code_distributions(teacher, batch.targets)
    ids = [tuple(row) for row in codes.tolist()]
    levels = []
    for level, z in enumerate(out.logits):
        terms = []
        for b, item in enumerate(batch.targets.tolist()):
            allowed = allowed_codes(ids, item, level) if trie_softmax else list(range(sizes[level]))
            logp = torch.log_softmax(z[b, allowed], -1)
            q = soft[level][b, allowed]
            assert torch.isclose(q.sum(), torch.tensor(1.0)) and soft[level][b].sum() == q.sum()
            terms.append((torch.xlogy(q, q) - q * logp).sum())
        levels.append(torch.stack(terms).mean())
    torch.testing.assert_close(out.loss, torch.stack(levels).mean(), atol=1e-5, rtol=1e-5)
    # distill = 0 ignores the teacher; in between, the two losses mix linearly
    torch.testing.assert_close(model(batch, teacher=teacher, distill=0.0).loss, plain)
    mixed = model(batch, teacher=teacher, distill=0.25).loss
    torch.testing.assert_close(mixed, 0.75 * plain + 0.25 * out.loss, atol=1e-5, rtol=1e-5)


def test_kv_cache_matches_uncached_decoding():
    sizes = [4, 5, 3]
    codes = random_catalog(30, sizes, seed=7)
    model, batch = tiny_model(codes, sizes), random_batch(30, 4, seed=8)
    memory = model.encode(batch)
    prefix = torch.from_numpy(codes[:4, :2])[:, None, :]  # [B, 1, 2] one beam per user
    full = torch.cat([model.bos(4, 1), model.embed_codes(prefix, 0)], dim=2)
    uncached, _ = model.decode(full, memory)  # [B, 1, 3, D]
    hidden, cache = model.decode(model.bos(4, 1), memory)
    steps = [hidden]
    for level in range(2):
        hidden, cache = model.decode(model.embed_codes(prefix[:, :, level : level + 1], level), memory, cache)
        steps.append(hidden)
    torch.testing.assert_close(torch.cat(steps, dim=2), uncached, atol=1e-5, rtol=1e-5)


def test_from_catalog_takes_the_semantic_ids_and_level_sizes():
    sids = np.array([[0, 2, 0], [0, 2, 1], [3, 1, 0], [1, 0, 0]])
    catalog = Catalog(item_ids=list("abcd"), items=[{}] * 4, sids=sids, codebook_size=4)
    model = Tiger.from_catalog(tiny_config(), catalog=catalog, max_history=5)
    assert model.level_sizes == [4, 4, 2] and model.max_history == 5
    assert torch.equal(model.item_codes, torch.from_numpy(sids))
    assert model.checkpoint_meta() == {"level_sizes": [4, 4, 2], "max_history": 5, "num_items": 4, "text_dim": 0}
    assert model.head.out_features == 4 + 4 + 2  # one output per code of every level


@pytest.mark.parametrize("trie_softmax", [False, True])
def test_ranking_methods_generative_and_exact(trie_softmax):
    """`generative` is the constrained beam (a top list); `exact` scores every item (complete). Each method's
    target_ranks is the target's place in what its recommend returns, history excluded or not."""
    codes = collision_catalog(60, [3, 5, 4], seed=51, repeats=4)
    sizes = [3, 5, 4, int(codes[:, -1].max()) + 1]
    N = codes.shape[0]
    model = tiny_model(codes, sizes, "sum", causal_encoder=True, trie_softmax=trie_softmax, decoder_layers=1)
    batch = random_batch(N, 6, seed=52)
    reference = brute_force_scores(model, batch)  # targets do not change it
    order = reference.argsort(dim=1, descending=True)
    targets = torch.tensor([0] + [int(order[b, 2 * b]) for b in range(1, 6)])  # ranks 2, 4, ..., 10
    history0 = batch.history[0][batch.history[0] >= 0]
    targets[0] = history0[reference[0, history0].argmax()]  # a target in its own history
    batch = with_targets(batch, targets)
    assert Tiger.methods == ("generative", "exact")
    generative, exact = model.ranking("generative"), model.ranking("exact")
    assert (generative.name, generative.complete, exact.name, exact.complete) == ("generative", False, "exact", True)
    with pytest.raises(KeyError):
        model.ranking("sasrec")
    trie = build_trie(codes)
    for exclude in (False, True):
        masked = reference.clone()
        if exclude:
            for b, hist in enumerate(batch.history.tolist()):
                masked[b, [h for h in hist if h >= 0]] = float("-inf")
        # exact: the brute-force top k and the brute-force ranks
        for k in (10, N):
            items, scores = exact.recommend(batch, k, exclude)
            ref_scores, ref_items = masked.topk(k, dim=1)
            live = torch.isfinite(ref_scores)
            assert torch.equal(items, torch.where(live, ref_items, -1))
            torch.testing.assert_close(scores[live], ref_scores[live], atol=1e-4, rtol=1e-4)
            assert torch.equal(exact.target_ranks(batch, k, exclude), ranks_in_scores(masked, targets, k))
        ranks = exact.target_ranks(batch, N, exclude)
        assert (int(ranks[0]) == MISS) == exclude  # the history target is found only when history stays in
        assert 0 < int((ranks[1:] < 7).sum()) < 5  # some targets inside a beam of 7, some outside
        # generative: beam search, and the target's place in the beam
        for beam_size in (7, 20):
            items, scores = generative.recommend(batch, beam_size, exclude)
            beam = beam_search(model.code_decoder(trie), batch, trie, beam_size=beam_size, exclude_history=exclude)
            assert torch.equal(items, beam.items) and torch.equal(scores, beam.scores)
            ranks = generative.target_ranks(batch, beam_size, exclude)
            hit = items == targets[:, None]
            assert torch.equal(ranks, torch.where(hit.any(1), hit.float().argmax(1), MISS))


def test_new_items_are_no_negatives_in_training():
    """Items no training sequence holds did not exist for training: with them marked new, the loss (trie softmax,
    label smoothing, distillation) equals the loss of the same weights over a catalogue without them, with the
    teacher's mass on them dropped; unmarked, they are negatives and the loss differs. New items here fill a
    whole level-0 subtree, whole level-1 children, and single leaves beside training items of the same prefix."""
    codes = collision_catalog(60, [3, 4, 3], seed=41, repeats=12)
    N = len(codes)
    sizes = [3, 4, 3, int(codes[:, -1].max()) + 1]
    new = torch.from_numpy((codes[:, 0] == 2) | (codes[:, 1] == 2))  # a level-0 subtree, level-1 children

    def groups(depth: int) -> dict[tuple, list[int]]:
        out: dict[tuple, list[int]] = {}
        for i, row in enumerate(codes[:, :depth].tolist()):
            if not new[i]:
                out.setdefault(tuple(row), []).append(i)
        return out

    # a level-2 child: every item under some (c0, c1, c2) whose (c0, c1) node keeps other training children
    prefix, members = next((p, m) for p, m in groups(2).items() if len({int(codes[i, 2]) for i in m}) > 1)
    third = int(codes[members[0], 2])
    new |= torch.from_numpy((codes[:, :2] == prefix).all(1) & (codes[:, 2] == third))
    level2_sibling = next(i for i in members if codes[i, 2] != third)
    shared = [g for g in groups(3).values() if len(g) > 1][:2]  # collision groups of training items
    assert len(shared) == 2
    new[[g[0] for g in shared]] = True  # one new leaf in each, its siblings training items
    old = (~new).nonzero()[:, 0]
    full = tiny_model(codes, sizes, "sum", causal_encoder=True, trie_softmax=True)
    full.cfg = dataclasses.replace(full.cfg, repeat_bias=False)
    full.repeat = None
    sub = tiny_model(codes[old.numpy()], sizes, "sum", causal_encoder=True, trie_softmax=True)
    sub.cfg, sub.repeat = full.cfg, None
    sub.load_state_dict({k: v for k, v in full.state_dict().items() if k != "item_codes"}, strict=False)
    remap = torch.full((N,), -1)
    remap[old] = torch.arange(len(old))
    g = torch.Generator().manual_seed(42)
    targets = torch.tensor([level2_sibling] + [g_[1] for g_ in shared]
                           + old[torch.randint(0, len(old), (3,), generator=g)].tolist())
    history = old[torch.randint(0, len(old), (6, 5), generator=g)]
    history[0, :2] = -1
    teacher = torch.softmax(torch.randn(6, N, generator=g) * 2, dim=1)
    batch = Batch(torch.zeros(6, dtype=torch.long), history, targets)
    sub_batch = Batch(batch.users, torch.where(history >= 0, remap[history.clamp(min=0)], -1), remap[targets])
    sub_teacher = teacher[:, old] / teacher[:, old].sum(1, keepdim=True)
    for distill in (0.0, 0.5):
        unmarked = full(batch, teacher=teacher, distill=distill, label_smoothing=0.1)
        full.new_items.copy_(new)
        marked = full(batch, teacher=teacher, distill=distill, label_smoothing=0.1)
        full.new_items.zero_()
        reference = sub(sub_batch, teacher=sub_teacher, distill=distill, label_smoothing=0.1)
        torch.testing.assert_close(marked.loss, reference.loss, atol=1e-5, rtol=1e-5)
        assert not torch.isclose(unmarked.loss, reference.loss, atol=1e-3)
