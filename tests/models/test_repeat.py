"""Repeat bias: which history items get an offset and which one, checked against its definition computed by
scanning the histories and the ID list; scores that stay distributions; the bias learned from data with and
without repeats; model directories saved before it existed."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
from tiny_tiger import brute_force_scores, collision_catalog, tiny_model

from genrec.config import SASRecConfig
from genrec.data.batches import Batch, TrainExamples, TrainWindows
from genrec.models.checkpoint import load_model
from genrec.models.pretrained import write_model_dir
from genrec.models.repeat import seen
from genrec.models.sasrec import SASRec
from genrec.search import beam_search, score_catalog


def test_seen_gives_each_prediction_the_latest_occurrence_of_each_item():
    history = torch.tensor([[-1, 3, 7, 3, 9]])
    every = seen(history, every_position=True)[0]
    # after position w: padding and later positions -1, an item seen again later up to w -1 at its older place
    expected = [[-1, -1, -1, -1, -1],
                [-1, 0, -1, -1, -1],
                [-1, 1, 0, -1, -1],
                [-1, -1, 1, 0, -1],
                [-1, -1, 2, 1, 0]]
    assert every.tolist() == expected
    assert seen(history, every_position=False)[0, 0].tolist() == expected[-1]


def _latest_ago(history: list[int]) -> dict[int, int]:
    """item -> how many items before the prediction it was last seen (the reference for `seen`)."""
    return {item: len(history) - 1 - max(j for j, x in enumerate(history) if x == item) for item in history if item >= 0}


def test_tiger_offsets_follow_the_definition_scanned_from_the_id_list():
    """A child's logit moves by w[ago] exactly when every item under it (found by scanning the ID list) is in
    the history, ago being the most recent of them; every other child's logit is untouched."""
    sizes = [3, 3, 2]
    codes = collision_catalog(24, sizes, seed=3, repeats=2)
    model = tiny_model(codes, sizes + [int(codes[:, -1].max()) + 1], item_tokens="sum", causal_encoder=True,
                       trie_softmax=True, decoder_layers=1, num_user_buckets=0)
    assert model.repeat is not None
    ids = [tuple(r) for r in codes.tolist()]
    N, C = len(ids), len(ids[0])
    with torch.no_grad():
        model.repeat.weight.copy_(torch.arange(1.0, 6.0))  # a distinct offset per recency bucket
    g = torch.Generator().manual_seed(1)
    history = torch.randint(0, N, (6, 5), generator=g)
    history[0, :2] = -1
    history[1] = torch.tensor([4, 4, 9, 4, 9])  # repeats: the latest occurrence counts
    for item in range(N):
        batch = Batch(torch.zeros(6, dtype=torch.long), history, torch.full((6,), item))
        with torch.no_grad():
            biased = model(batch).logits
            repeat, model.repeat = model.repeat, None
            plain = model(batch).logits
            model.repeat = repeat
        for b in range(6):
            ago = _latest_ago(history[b].tolist())
            for level in range(C):
                prefix = ids[item][:level]
                for code in {i[level] for i in ids if i[:level] == prefix}:  # the children of the item's prefix
                    under = [j for j, i in enumerate(ids) if i[: level + 1] == prefix + (code,)]
                    want = float(min(ago[j] for j in under) + 1) if all(j in ago for j in under) else 0.0
                    got = float(biased[level][b, code] - plain[level][b, code])
                    assert abs(got - want) < 1e-4, (item, b, level, code)


def test_tiger_search_and_exact_scores_carry_the_offsets():
    sizes = [3, 3, 2]
    codes = collision_catalog(24, sizes, seed=4, repeats=2)
    model = tiny_model(codes, sizes + [int(codes[:, -1].max()) + 1], item_tokens="sum", causal_encoder=True,
                       trie_softmax=True, decoder_layers=1, num_user_buckets=0)
    with torch.no_grad():
        model.repeat.weight.fill_(-4.0)
    history = torch.tensor([[-1, -1, 3, 7, 3], [1, 2, 5, 6, 11]])
    batch = Batch(torch.zeros(2, dtype=torch.long), history)
    reference = brute_force_scores(model, batch)  # teacher-forced, one forward pass per item
    exact = score_catalog(model.code_decoder(), batch, model.trie)
    torch.testing.assert_close(exact, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(exact.exp().sum(1), torch.ones(2), atol=1e-5, rtol=1e-5)  # still a distribution
    result = beam_search(model.code_decoder(), batch, model.trie, beam_size=len(codes))
    torch.testing.assert_close(result.scores, exact.gather(1, result.items), atol=1e-4, rtol=1e-4)
    repeat, model.repeat = model.repeat, None
    plain = score_catalog(model.code_decoder(), batch, model.trie)
    model.repeat = repeat
    for b in range(2):  # every history item lost probability; the rest gained
        seen_items = sorted({int(x) for x in history[b] if x >= 0})
        assert bool((exact[b, seen_items] < plain[b, seen_items]).all())
        others = [i for i in range(len(codes)) if i not in seen_items]
        assert bool((exact[b, others] >= plain[b, others] - 1e-5).all())


def tiny_sasrec(repeat_bias: bool = True, seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    cfg = SASRecConfig(d_model=16, num_heads=2, d_ff=16, layers=1, dropout=0.0, repeat_bias=repeat_bias)
    return SASRec(cfg=cfg, num_items=30, max_history=6)


def test_sasrec_offsets_each_history_item_by_its_latest_occurrence():
    model = tiny_sasrec().eval()
    with torch.no_grad():
        model.repeat.weight.copy_(torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]))
    history = torch.tensor([[-1, 5, 8, 5, 2], [1, 2, 3, 4, 3]])
    batch = Batch(users=torch.zeros(2, dtype=torch.long), history=history)
    z, _ = model.next_logits(history, None)
    plain = model.logits(model.hidden(history)[:, -1]).float()
    expected = plain.clone()
    for b in range(2):
        for item, ago in _latest_ago(history[b].tolist()).items():
            expected[b, item] += model.repeat.weight[ago]
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(model.score(batch), torch.log_softmax(expected, -1))


def _train(model: torch.nn.Module, sequences: list[np.ndarray], steps: int = 150) -> None:
    windows = TrainWindows(sequences, np.zeros(len(sequences), dtype=np.int64), 6)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(windows.batch(np.arange(len(windows)))).loss.backward()
        optimizer.step()


def test_the_bias_is_learned_from_the_data():
    """Sequences of distinct items teach SASRec to push the items just seen down; sequences where every item
    comes twice in a row teach it to pull the most recent one up."""
    rng = np.random.default_rng(0)
    distinct = [rng.choice(30, size=7, replace=False) for _ in range(40)]
    twice = [np.repeat(rng.choice(30, size=4, replace=False), 2) for _ in range(40)]
    never, again = tiny_sasrec(), tiny_sasrec()
    _train(never, distinct)
    _train(again, twice)
    assert float(never.repeat.weight.detach()[0]) < -0.5
    assert float(again.repeat.weight.detach()[0]) > 0.2  # half its targets repeat the item before, half do not


def test_sasrec_trains_its_bias_apart_from_the_model():
    """The model's own gradients are those of the same model without the bias (the bias learns from its detached
    logits), while the bias gets one."""
    rng = np.random.default_rng(1)
    windows = TrainWindows([rng.choice(30, size=7, replace=False) for _ in range(8)], np.zeros(8, dtype=np.int64), 6)
    batch = windows.batch(np.arange(len(windows)))
    with_bias, without = tiny_sasrec(True, seed=3), tiny_sasrec(False, seed=3)
    with torch.no_grad():
        with_bias.repeat.weight.copy_(torch.linspace(-1.0, 1.0, 6))  # an offset that would move the model's loss
    for model in (with_bias, without):
        model.train()
        model(batch).loss.backward()
    grads = dict(without.named_parameters())
    for name, p in with_bias.named_parameters():
        if name.startswith("repeat."):
            assert p.grad is not None and float(p.grad.abs().sum()) > 0
        else:
            torch.testing.assert_close(p.grad, grads[name].grad)


def test_a_model_directory_saved_before_the_repeat_bias_loads_without_one(tmp_path):
    """A directory whose config predates the option (no repeat_bias key, no such weights) loads as trained."""
    model = tiny_sasrec(repeat_bias=False).eval()
    section = dataclasses.asdict(model.cfg)
    del section["repeat_bias"]
    write_model_dir(model, tmp_path / "m", {"kind": "sasrec", "model": section, "meta": model.checkpoint_meta()}, None)
    loaded = load_model(tmp_path / "m")
    assert loaded.repeat is None and json.loads((tmp_path / "m" / "config.json").read_text())["model"] == section
    history = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded.score(Batch(torch.zeros(1, dtype=torch.long), history)),
                               model.score(Batch(torch.zeros(1, dtype=torch.long), history)))


def _tiger_with_collisions(seed: int):
    """A Tiger over IDs where several items share a prefix (collision groups), its offsets distinct per bucket."""
    sizes = [2, 2, 2]
    codes = collision_catalog(16, sizes, seed=seed, repeats=3)
    model = tiny_model(codes, sizes + [int(codes[:, -1].max()) + 1], item_tokens="sum", causal_encoder=True,
                       trie_softmax=True, decoder_layers=1, num_user_buckets=0)
    with torch.no_grad():
        model.repeat.weight.copy_(-torch.linspace(0.5, 2.5, 5))
    return model, codes


def test_tiger_one_pass_training_with_offsets_equals_one_example_per_target():
    """Every position of a window trains with the offsets of its own prefix (repeats included): the one-pass loss
    is the mean of the per-target losses."""
    model, codes = _tiger_with_collisions(seed=5)
    rng = np.random.default_rng(2)
    train = [rng.choice(len(codes), size=n) for n in (3, 6, 5, 4)]  # drawn with replacement: repeats
    windows = TrainWindows(train, np.zeros(4, dtype=np.int64), 5)
    examples = TrainExamples(train, np.zeros(4, dtype=np.int64), 5)
    one_pass = model(windows.batch(np.arange(len(windows)))).loss
    per_example = torch.stack([model(examples.batch(np.array([i]))).loss for i in range(len(examples))])
    torch.testing.assert_close(one_pass, per_example.mean(), atol=1e-5, rtol=1e-5)


def test_tiger_offset_gradients_match_finite_differences():
    """Each bucket's gradient is the loss's slope in it, also when a seen-only node holds several seen items
    (its offset enters once): items 0 and 1 share the node (0, 0, 0), and target 2 is trained over its parent's
    children, that node among them."""
    codes = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0],
                      [1, 1, 0, 0], [1, 1, 0, 1], [0, 1, 1, 0], [1, 1, 1, 0]])
    model = tiny_model(codes, [2, 2, 2, 2], item_tokens="sum", causal_encoder=True, trie_softmax=True,
                       decoder_layers=1, num_user_buckets=0)
    with torch.no_grad():
        model.repeat.weight.copy_(-torch.linspace(0.5, 2.5, 5))
    history = torch.tensor([[0, 3, 1, 7, 4], [5, 1, 9, 0, 6]])
    targets = torch.tensor([[3, 1, 7, 4, 2], [1, 9, 0, 6, 2]])
    batch = Batch(torch.zeros(2, dtype=torch.long), history, targets)
    model.zero_grad()
    model(batch).loss.backward()
    grad = model.repeat.weight.grad.clone()
    eps = 1e-2
    with torch.no_grad():
        for b in range(5):
            slope = []
            for sign in (1, -1):
                model.repeat.weight[b] += sign * eps
                slope.append(float(model(batch).loss))
                model.repeat.weight[b] -= sign * eps
            assert abs((slope[0] - slope[1]) / (2 * eps) - float(grad[b])) < 1e-3 + 0.02 * abs(float(grad[b])), b
    assert float(grad.abs().sum()) > 0.01  # the batch does reach the offsets
