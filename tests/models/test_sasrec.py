"""SASRec: one-pass training equals per-example training, exact top-k, and the pipeline with model.kind=sasrec."""

from __future__ import annotations

import json

import numpy as np
import torch

from genrec.batches import TrainExamples, TrainWindows
from genrec.cli import main
from genrec.config import ModelConfig
from genrec.sasrec import SASRec
from genrec.tiger import Batch

from conftest import TINY


def tiny_sasrec(n_items: int = 30, seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    cfg = ModelConfig(kind="sasrec", d_model=16, num_heads=2, head_dim=8, d_ff=16, encoder_layers=2, dropout=0.0)
    model = SASRec(cfg=cfg, item_codes=torch.zeros(n_items, 2, dtype=torch.long), level_sizes=[1, 1], max_history=6)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


def test_one_pass_training_equals_one_example_per_target():
    model = tiny_sasrec()
    rng = np.random.default_rng(0)
    train = [rng.choice(30, size=n, replace=False) for n in (2, 5, 7, 3)]
    users = np.zeros(4, dtype=np.int64)
    windows, examples = TrainWindows(train, users, 6), TrainExamples(train, users, 6)
    one_pass = model(windows.batch(np.arange(len(windows)))).loss
    per_example = torch.stack([model(examples.batch(np.array([i]))).loss for i in range(len(examples))])
    torch.testing.assert_close(one_pass, per_example.mean(), atol=1e-5, rtol=1e-5)


def test_recommend_is_the_exact_top_k_and_can_exclude_history():
    model = tiny_sasrec().eval()
    history = torch.tensor([[-1, -1, 3, 4], [1, 2, 5, 6]])
    batch = Batch(users=torch.zeros(2, dtype=torch.long), history=history)
    scores = model.score(batch)
    torch.testing.assert_close(scores.exp().sum(1), torch.ones(2))
    items, top = model.recommend(batch, 5)
    ref_top, ref_items = scores.topk(5, dim=1)
    assert torch.equal(items, ref_items) and torch.equal(top, ref_top)
    items, _ = model.recommend(batch, 30, exclude_history=True)
    assert not set(items[0, :28].tolist()) & {3, 4} and not set(items[1, :26].tolist()) & {1, 2, 5, 6}
    # a left-padded history scores as the same history without padding
    alone = model.score(Batch(users=torch.zeros(1, dtype=torch.long), history=torch.tensor([[3, 4]])))
    torch.testing.assert_close(alone[0], scores[0], atol=1e-5, rtol=1e-5)


def test_pipeline_with_sasrec_reports_every_k(tmp_path, tiny_overrides):
    assert main(["run", "-c", str(TINY), *tiny_overrides, "model.kind=sasrec", "model.d_model=32",
                 "model.encoder_layers=2", "model.dropout=0.2", "evaluate.ks=[5,10,20,50]"]) == 0
    results = json.loads((tmp_path / "run" / "evaluate" / "results.json").read_text())
    for split in ("valid", "test"):
        for k in (5, 10, 20, 50):  # a complete ranking: every k is reported, beyond the beam size of 20
            assert f"{split}/sasrec/recall@{k}" in results["metrics"]
    assert results["omitted"] == {}
    recalls = [results["metrics"][f"test/sasrec/recall@{k}"] for k in (5, 10, 20, 50)]
    assert recalls == sorted(recalls) and recalls[-1] < 1.0
    assert recalls[1] > 0.3  # learnable synthetic data: far above chance (10 of 64 items = 0.16)


def test_next_item_probs_per_position_equal_per_example_and_drop_the_history():
    model = tiny_sasrec().eval()
    rng = np.random.default_rng(1)
    train = [rng.choice(30, size=n, replace=False) for n in (2, 5, 7, 3)]
    train[2][3] = 0  # item 0 in a history with left padding: padding must not un-drop it
    users = np.zeros(4, dtype=np.int64)
    windows, examples = TrainWindows(train, users, 6), TrainExamples(train, users, 6)
    one_pass = model.next_item_probs(windows.batch(np.arange(len(windows))), temperature=0.5)
    per_example = torch.cat([model.next_item_probs(examples.batch(np.array([i])), temperature=0.5)
                             for i in range(len(examples))])
    # windows and examples list the targets in the same order: sequence by sequence, position by position
    torch.testing.assert_close(one_pass, per_example, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_pass.sum(1), torch.ones(len(examples)))
    for i in range(len(examples)):
        history = examples.batch(np.array([i])).history[0]
        seen = history[history >= 0]
        assert (one_pass[i, seen] == 0).all() and (one_pass[i].count_nonzero() == 30 - len(seen))
    # the temperature sharpens the same ranking
    hot = model.next_item_probs(windows.batch(np.arange(len(windows))), temperature=2.0)
    assert torch.equal(hot.argmax(1), one_pass.argmax(1)) and (hot.max(1).values < one_pass.max(1).values).all()
