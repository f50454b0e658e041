"""SASRec: one-pass training equals per-example training, exact top-k, and the pipeline with model.kind=sasrec."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from genrec.cli import main
from genrec.config import SASRecConfig, load_config
from genrec.data.batches import Batch, TrainExamples, TrainWindows
from genrec.models.checkpoint import load_model
from genrec.models.sasrec import SASRec
from genrec.rundir import RunDir
from genrec.search import MISS
from genrec.workspace import load_workspace

from conftest import TINY


def tiny_sasrec(n_items: int = 30, seed: int = 0, positions_from: str = "first") -> SASRec:
    torch.manual_seed(seed)
    cfg = SASRecConfig(d_model=16, num_heads=2, d_ff=16, layers=2, dropout=0.0, positions_from=positions_from)
    model = SASRec(cfg=cfg, num_items=n_items, max_history=6)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


def test_one_pass_training_equals_one_example_per_target():
    """With positions from the first item a prefix encodes the same alone or inside its window, so one pass over
    a window is the mean loss of its targets as separate examples. With positions from the last item (the
    default, as in the SASRec paper's code) a prefix's positions depend on what follows it in the window: the
    losses differ, and the last target, whose history ends the window, is the same either way."""
    rng = np.random.default_rng(0)
    train = [rng.choice(30, size=n, replace=False) for n in (2, 5, 7, 3)]
    users = np.zeros(4, dtype=np.int64)
    windows, examples = TrainWindows(train, users, 6), TrainExamples(train, users, 6)
    for positions_from in ("first", "last"):
        model = tiny_sasrec(positions_from=positions_from)
        one_pass = model(windows.batch(np.arange(len(windows)))).loss
        per_example = torch.stack([model(examples.batch(np.array([i]))).loss for i in range(len(examples))])
        if positions_from == "first":
            torch.testing.assert_close(one_pass, per_example.mean(), atol=1e-5, rtol=1e-5)
        else:
            assert abs(float(one_pass.detach()) - float(per_example.detach().mean())) > 1e-3
    batch = windows.batch(np.arange(len(windows)))
    h = model.hidden(batch.history)[:, -1]  # the state after each window's last item, the windows left-padded
    alone = torch.cat([model.hidden(torch.tensor([t[:-1][-6:].tolist()]))[:, -1] for t in train])
    torch.testing.assert_close(h, alone, atol=1e-5, rtol=1e-5)


def test_recommend_is_the_exact_top_k_and_can_exclude_history():
    model = tiny_sasrec().eval()
    history = torch.tensor([[-1, -1, 3, 4], [1, 2, 5, 6]])
    batch = Batch(users=torch.zeros(2, dtype=torch.long), history=history)
    scores = model.score(batch)
    torch.testing.assert_close(scores.exp().sum(1), torch.ones(2))
    assert SASRec.methods == ("sasrec",)
    method = model.ranking("sasrec")
    assert method.name == "sasrec" and method.complete
    with pytest.raises(KeyError):
        model.ranking("generative")
    items, top = method.recommend(batch, 5, False)
    ref_top, ref_items = scores.topk(5, dim=1)
    assert torch.equal(items, ref_items) and torch.equal(top, ref_top)
    items, top = method.recommend(batch, 30, True)
    assert not set(items[0, :28].tolist()) & {3, 4} and not set(items[1, :26].tolist()) & {1, 2, 5, 6}
    assert items[0, 28:].tolist() == [-1, -1] and items[1, 26:].tolist() == [-1] * 4  # nothing left to return
    kept = scores.clone()
    kept[0, [3, 4]] = kept[1, [1, 2, 5, 6]] = float("-inf")
    ref_top, ref_items = kept.topk(26, dim=1)
    assert torch.equal(items[:, :26], ref_items) and torch.equal(top[:, :26], ref_top)
    # target ranks: items scoring higher; a history target is a miss once the history is excluded
    targets = torch.tensor([4, int(ref_items[1, 3])])
    ranks = method.target_ranks(Batch(batch.users, history, targets), 30, True)
    assert ranks[0] == MISS and ranks[1] == 3
    assert method.target_ranks(Batch(batch.users, history, targets), 30, False)[0] == (scores[0] > scores[0, 4]).sum()
    # a left-padded history scores as the same history without padding
    alone = model.score(Batch(users=torch.zeros(1, dtype=torch.long), history=torch.tensor([[3, 4]])))
    torch.testing.assert_close(alone[0], scores[0], atol=1e-5, rtol=1e-5)


def test_pipeline_with_sasrec_reports_every_k(tmp_path, tiny_overrides):
    overrides = [*tiny_overrides, "model.kind=sasrec", "model.sasrec.d_model=32", "model.sasrec.layers=2",
                 "model.sasrec.dropout=0.2", "evaluate.ks=[5,10,20,50]", "evaluate.methods=[]",
                 "evaluate.dtype=float32"]  # float32 on every machine, so that the metrics can be recomputed exactly
    assert main(["run", "-c", str(TINY), *overrides]) == 0
    results = json.loads((tmp_path / "run" / "evaluate" / "results.json").read_text())
    assert results["methods"] == ["sasrec"] and results["omitted"] == {}
    # a complete ranking: every k is reported, beyond the beam size of 20, and equals the metrics computed here
    # from the model's own scores, one user at a time
    cfg = load_config(TINY, overrides)
    run = RunDir(cfg.run_dir)
    model = load_model(run.model)
    assert isinstance(model, SASRec) and model.cfg.d_model == 32
    ws = load_workspace(cfg, run, with_sids=False)
    for split, eval_set in (("valid", ws.split.valid), ("test", ws.split.test)):
        ranks = []
        for history, target in zip(eval_set.histories, eval_set.targets):
            history = history[-cfg.data.max_history :]  # what the model sees, and what it may not recommend
            scores = model.score(Batch(torch.zeros(1, dtype=torch.long), torch.from_numpy(history[None])))[0]
            scores[history] = float("-inf")
            ranks.append(int((scores > scores[target]).sum()))
        for k in (5, 10, 20, 50):
            recall = np.mean([r < k for r in ranks])
            ndcg = np.mean([1 / math.log2(r + 2) if r < k else 0.0 for r in ranks])
            assert results["metrics"][f"{split}/sasrec/recall@{k}"] == pytest.approx(recall, abs=1e-9)
            assert results["metrics"][f"{split}/sasrec/ndcg@{k}"] == pytest.approx(ndcg, abs=1e-6)
    assert results["metrics"]["test/sasrec/recall@10"] > 0.3  # learnable synthetic data: far above chance (0.16)


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


def test_attention_dropout_is_its_own_setting():
    """attention_dropout < 0 follows `dropout`; 0 turns off only the attention weights' dropout: in training mode
    the outputs then vary with the other dropouts alone, and with dropout 0 too the model is deterministic."""
    base = SASRecConfig(d_model=16, num_heads=2, d_ff=16, layers=2, dropout=0.5)
    assert [layer.attn.dropout for layer in SASRec(cfg=base, num_items=10, max_history=6).layers] == [0.5, 0.5]
    off = dataclasses.replace(base, attention_dropout=0.0)
    assert [layer.attn.dropout for layer in SASRec(cfg=off, num_items=10, max_history=6).layers] == [0.0, 0.0]
    model = SASRec(cfg=dataclasses.replace(base, dropout=0.0, attention_dropout=0.9), num_items=10, max_history=6)
    history = torch.tensor([[0, 1, 2, 3, 4, 5]])
    model.train()
    assert not torch.equal(model.hidden(history), model.hidden(history))  # only the attention weights drop
    plain = SASRec(cfg=dataclasses.replace(base, dropout=0.0, attention_dropout=0.0), num_items=10, max_history=6)
    plain.train()
    assert torch.equal(plain.hidden(history), plain.hidden(history))


def test_scores_are_float32_products_under_bf16_autocast():
    """The evaluator runs under bf16 autocast where the CPU has it; the catalogue's logits stay float32 products of
    the (bf16-computed) state with the item embeddings, since bf16 logits would tie items with the target."""
    model = tiny_sasrec(n_items=500).eval()
    history = torch.randint(0, 500, (4, 6))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.hidden(history)[:, -1]
        z, _ = model.next_logits(history, None)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, h.float() @ model.item_embeddings().float().T, rtol=0, atol=0)
