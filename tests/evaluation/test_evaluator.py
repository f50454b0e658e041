"""The evaluator: every method a model offers, metrics equal to ranks computed by brute force, cut-offs a top list
cannot report left out with the reason, methods a model does not offer refused, and the printed table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.config import SASRecConfig
from genrec.data.batches import Batch
from genrec.data.splits import EvalSet
from genrec.errors import GenrecError
from genrec.evaluation.evaluator import evaluate_split, format_table, repeat_share
from genrec.ids.trie import build_trie
from genrec.models.content import ContentBaseline
from genrec.models.sasrec import SASRec
from genrec.precision import resolve_dtype
from genrec.search import beam_search

from tiny_tiger import brute_force_scores, collision_catalog, tiny_model


def eval_set(num_items: int, users: int, seed: int) -> EvalSet:
    """Histories of 1 to 8 items (some longer than the model's 5), targets outside them, some repeated."""
    rng = np.random.default_rng(seed)
    histories, targets = [], []
    for _ in range(users):
        items = rng.permutation(num_items)[: rng.integers(2, 10)]
        histories.append(items[:-1].astype(np.int64))
        targets.append(int(items[-1]))
    return EvalSet(users=np.arange(users, dtype=np.int64), histories=histories, targets=np.array(targets))


def metrics_from_ranks(ranks: list[int], split: str, method: str, ks: tuple[int, ...]) -> dict[str, float]:
    out = {}
    for k in ks:
        out[f"{split}/{method}/recall@{k}"] = float(np.mean([r < k for r in ranks]))
        out[f"{split}/{method}/ndcg@{k}"] = float(np.mean([1 / math.log2(r + 2) if r < k else 0.0 for r in ranks]))
    return out


def test_tiger_metrics_equal_brute_force_ranks_for_both_methods():
    codes = collision_catalog(50, [3, 5, 4], seed=61, repeats=4)
    sizes = [3, 5, 4, int(codes[:, -1].max()) + 1]
    N = codes.shape[0]
    model = tiny_model(codes, sizes, "sum", causal_encoder=True, trie_softmax=True, decoder_layers=1)
    es = eval_set(N, 30, seed=62)
    buckets = np.arange(30) % 7
    trie = build_trie(codes)
    exact_ranks, beam_ranks = [], []
    for history, target, user in zip(es.histories, es.targets, es.users):
        history = history[-model.max_history :]  # the evaluated history: what the model sees
        batch = Batch(torch.tensor([buckets[user]]), torch.from_numpy(history[None]), torch.tensor([target]))
        scores = brute_force_scores(model, batch)[0]
        scores[history] = float("-inf")
        exact_ranks.append(int((scores > scores[target]).sum()))
        items = beam_search(model.code_decoder(trie), batch, trie, beam_size=5, exclude_history=True).items[0]
        beam_ranks.append(items.tolist().index(target) if target in items.tolist() else 10**9)
    assert 0 < sum(r < 5 for r in beam_ranks) < 30  # some hits and some misses: the comparison can fail
    expected = {**metrics_from_ranks(beam_ranks, "test", "generative", (1, 5)),
                **metrics_from_ranks(exact_ranks, "test", "exact", (1, 5, 20))}
    for batch_size in (4, 256):
        result = evaluate_split(model, es, buckets, split="test", beam_size=5, ks=(20, 1, 5),
                                methods=("generative", "exact"), batch_size=batch_size, exclude_history=True,
                                dtype="float32")  # the reference is float32 (auto may pick bfloat16)
        assert result.metrics.keys() == expected.keys()
        for key, value in expected.items():
            assert result.metrics[key] == pytest.approx(value, abs=1e-9), key
        assert result.users == 30
        # a beam of 5 cannot say whether the target is in the top 20: reported as omitted, with the fix
        assert sorted(result.omitted) == ["test/generative/ndcg@20", "test/generative/recall@20"]
        assert "evaluate.beam_size" in result.omitted["test/generative/recall@20"]
    # no methods named: the model's default (its first) alone
    default = evaluate_split(model, es, buckets, split="valid", beam_size=5, ks=(1, 5), exclude_history=True)
    assert default.metrics == {k.replace("test/", "valid/"): v for k, v in expected.items() if "/generative/" in k}


def test_cold_and_in_set_slices_are_the_metrics_of_their_own_users():
    sasrec = SASRec(cfg=SASRecConfig(d_model=8, num_heads=1, d_ff=8, layers=1), num_items=20, max_history=5)
    torch.manual_seed(3)
    es = eval_set(20, 40, seed=4)
    cold = np.zeros(20, dtype=bool)
    cold[[1, 4, 7, 11, 15, 18]] = True
    is_cold = cold[es.targets]
    assert 0 < is_cold.sum() < 40
    buckets = np.zeros(40, np.int64)
    run = lambda es, cold=None: evaluate_split(sasrec, es, buckets[: len(es)], split="test", beam_size=5,  # noqa: E731
                                               ks=(1, 5, 10), batch_size=7, exclude_history=True, cold=cold)
    sliced = run(es, cold)
    assert sliced.users == 40 and sliced.cold_users == int(is_cold.sum())
    for part, rows in (("cold", is_cold), ("in", ~is_cold)):
        alone = run(EvalSet(np.arange(int(rows.sum())), [h for h, r in zip(es.histories, rows) if r],
                            es.targets[rows]))
        for key, value in alone.metrics.items():
            assert sliced.metrics[key.replace("/sasrec/", f"/sasrec/{part}/")] == pytest.approx(value, abs=1e-12)
    assert {k: v for k, v in sliced.metrics.items() if k.count("/") == 2} == run(es).metrics  # "all" unchanged
    # a slice without users has no metrics (not 0)
    none_cold = run(es, np.zeros(20, dtype=bool))
    assert none_cold.cold_users == 0 and not any("/cold/" in k for k in none_cold.metrics)


def test_methods_a_model_does_not_offer_are_refused_with_the_ones_it_has():
    codes = collision_catalog(20, [3, 4], seed=1)
    tiger = tiny_model(codes, [3, 4, int(codes[:, -1].max()) + 1])
    sasrec = SASRec(cfg=SASRecConfig(d_model=8, num_heads=1, d_ff=8, layers=1), num_items=20, max_history=5)
    es = eval_set(20, 4, seed=2)
    with pytest.raises(GenrecError, match="evaluate.methods names sasrec, which a Tiger does not offer; "
                                          "choose from generative, exact"):
        evaluate_split(tiger, es, np.zeros(4, np.int64), split="test", beam_size=5, ks=(5,), methods=("sasrec",))
    with pytest.raises(GenrecError, match="evaluate.methods names generative, exact, which a SASRec does not "
                                          "offer; choose from sasrec"):
        evaluate_split(sasrec, es, np.zeros(4, np.int64), split="test", beam_size=5, ks=(5,),
                       methods=("generative", "exact"))


def test_format_table_prints_every_value_and_dashes_for_the_omitted():
    metrics = {"test/generative/recall@5": 0.5, "test/generative/ndcg@5": 0.25,
               "test/exact/recall@5": 0.75, "test/exact/ndcg@5": 0.123456, "test/exact/recall@50": 1.0,
               "test/exact/ndcg@50": 0.5}
    lines = format_table(metrics, (50, 5)).splitlines()
    assert lines[0].split() == ["split/method[/slice]", "R@5", "R@50", "N@5", "N@50"]
    assert set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0])
    assert lines[2].split() == ["test/exact", "0.7500", "1.0000", "0.1235", "0.5000"]
    assert lines[3].split() == ["test/generative", "0.5000", "-", "0.2500", "-"]
    assert len(lines) == 4


def test_repeat_share_counts_targets_already_in_the_history():
    histories = [np.array([1, 2]), np.array([3]), np.array([5, 6, 7]), np.array([], int)]
    es = EvalSet(users=np.arange(4), histories=histories, targets=np.array([2, 4, 5, 1]))
    assert repeat_share(es) == 0.5
    assert repeat_share(EvalSet(users=np.arange(0), histories=[], targets=np.array([], int))) == 0.0


def test_resolve_dtype_picks_bfloat16_only_where_the_cpu_has_it():
    assert resolve_dtype("float32", "cuda") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if native else "float32")


def test_the_content_baseline_ranks_by_the_cosine_with_its_recent_history():
    torch.manual_seed(0)
    text = torch.randn(20, 6)
    model = ContentBaseline(text, max_history=5, recent=2)
    es = eval_set(20, 12, seed=9)
    unit = torch.nn.functional.normalize(text, dim=-1)
    ranks = []
    for history, target in zip(es.histories, es.targets):
        h = history[-5:]
        query = unit[torch.from_numpy(h[-2:])].sum(0)
        scores = torch.stack([torch.nn.functional.cosine_similarity(query, unit[i], dim=0) for i in range(20)])
        scores[torch.from_numpy(h)] = float("-inf")
        ranks.append(int((scores > scores[target]).sum()))
    result = evaluate_split(model, es, np.zeros(12, np.int64), split="test", beam_size=5, ks=(1, 5, 10),
                            exclude_history=True)
    for key, value in metrics_from_ranks(ranks, "test", "content", (1, 5, 10)).items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-6), key


def test_the_content_baseline_scores_in_float32_under_bf16_autocast():
    """The evaluator runs models under bf16 autocast where the CPU has it; bf16 cosines (8 bits of mantissa) tie
    many items with the target (ranks now break ties by item index, but the ranking itself would blur)."""
    torch.manual_seed(1)
    model = ContentBaseline(torch.randn(500, 32), max_history=5)
    batch = Batch(torch.zeros(4, dtype=torch.long), torch.randint(0, 500, (4, 5)))
    plain = model.score(batch, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = model.score(batch, True)
    assert auto.dtype == torch.float32 and torch.equal(auto, plain)
