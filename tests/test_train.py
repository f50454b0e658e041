"""Training: exact resume from a checkpoint, distillation, 2-process DDP / evaluation against 1 process, and the
trainer's pieces (examples, teacher inputs, optimizer schedule)."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from genrec.cli import main
from genrec.config import SASRecConfig, load_config
from genrec.data.batches import TrainExamples, TrainWindows
from genrec.distributed import DistInfo
from genrec.evaluation.evaluator import evaluate_split
from genrec.models.checkpoint import load_model, save_model
from genrec.models.registry import build_model
from genrec.models.sasrec import SASRec
from genrec.models.tiger import Tiger
from genrec.pipeline import run_stage
from genrec.rundir import RunDir
from genrec.train import distill_inputs, loss_weight, make_examples, make_optimizer
from genrec.workspace import load_workspace

from conftest import TINY
from tiny_tiger import random_batch, random_catalog, tiny_model, with_targets


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_data):
    """A tiny run directory with prepare, embed, collab and quantize done."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    overrides = [f"run_dir={run_dir}", f"data.path={tiny_data}"]
    for stage in ("prepare", "embed", "collab", "quantize"):
        assert main([stage, "-c", str(TINY), *overrides]) == 0
    return run_dir, overrides


def losses(log_path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in map(json.loads, log_path.open()) if "train/loss" in r}


def test_resume_gives_the_same_next_steps_as_an_uninterrupted_run(quantized, tmp_path):
    run_dir, overrides = quantized
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg = load_config(TINY, [*overrides[1:], f"run_dir={copy}", "train.max_steps=8", "train.eval_every=4",
                             "train.log_every=1", "model.tiger.dropout=0.3", "train.patience=0"])
    assert run_stage(cfg, "train", DistInfo())
    full = losses(copy / "train" / "log.jsonl")
    assert sorted(full) == list(range(1, 9))
    # simulate a run killed after step 4: its work directory holds checkpoint-4 and the log up to step 4
    partial = copy / "train.partial"
    shutil.copytree(copy / "train", partial)
    shutil.rmtree(partial / "checkpoint-8")
    (partial / "stage.json").rename(partial / "stage.partial.json")
    stamp = json.loads((partial / "stage.partial.json").read_text())
    (partial / "stage.partial.json").write_text(json.dumps({k: stamp[k] for k in ("stage", "fingerprint", "upstream")}))
    lines = [line for line in (partial / "log.jsonl").open() if json.loads(line)["step"] <= 4]
    (partial / "log.jsonl").write_text("".join(lines))
    shutil.rmtree(copy / "train")
    assert run_stage(cfg, "train", DistInfo())
    resumed = losses(copy / "train" / "log.jsonl")
    assert sorted(resumed) == list(range(1, 9))
    for step in range(5, 9):  # dropout is on: the RNG state must be restored too
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), step


def test_distilled_training_runs_and_needs_the_collab_model(quantized, tmp_path, capsys):
    run_dir, overrides = quantized

    def train_args(run, distill: float) -> list[str]:
        return ["train", "-c", str(TINY), *overrides[1:], f"run_dir={run}", "train.max_steps=4", "train.eval_every=2",
                "train.log_every=1", f"train.distill={distill}"]

    copy, plain = tmp_path / "run", tmp_path / "plain"
    shutil.copytree(run_dir, copy)
    shutil.copytree(run_dir, plain)
    assert main(train_args(copy, 0.5)) == 0
    distilled = losses(copy / "train" / "log.jsonl")
    assert sorted(distilled) == [1, 2, 3, 4]
    assert isinstance(load_model(copy / "train" / "best"), Tiger)
    # the teacher took part: the same first batch from the same initial weights has another loss without it
    assert main(train_args(plain, 0.0)) == 0
    assert abs(losses(plain / "train" / "log.jsonl")[1] - distilled[1]) > 1e-3
    # a corrupt teacher names the command that remakes it
    weights = copy / "collab" / "sasrec" / "best" / "model.safetensors"
    weights.write_bytes(b"garbage")
    shutil.rmtree(copy / "train")
    capsys.readouterr()
    assert main(train_args(copy, 0.5)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a corrupt model" in err and "retrain with 'genrec collab --force'" in err
    shutil.rmtree(copy / "collab" / "sasrec" / "best")
    shutil.rmtree(copy / "train.partial", ignore_errors=True)
    capsys.readouterr()
    assert main(train_args(copy, 0.5)) == 2
    err = capsys.readouterr().err
    assert "collab" in err and "has none; run 'genrec collab'" in err and "Traceback" not in err
    assert not (copy / "train").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval_worker(rank: int, world: int, port: int, run_dir: str, model_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from genrec.distributed import all_reduce_sum, cleanup, compute_init

    dist = compute_init()
    cfg = load_config(TINY, [f"run_dir={run_dir}"])
    ws = load_workspace(cfg, RunDir(run_dir))
    model = load_model(model_dir)
    r = evaluate_split(model, ws.split.test, ws.user_bucket, split="test", beam_size=10, ks=(1, 5, 10),
                       methods=("generative", "exact"), batch_size=7, rank=dist.rank, world_size=dist.world_size,
                       all_reduce=all_reduce_sum)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"metrics": r.metrics, "users": r.users}, f)
    cleanup()


def test_two_process_evaluation_equals_one_process(quantized, tmp_path):
    run_dir, overrides = quantized
    cfg = load_config(TINY, [*overrides[1:], f"run_dir={run_dir}"])
    ws = load_workspace(cfg, RunDir(run_dir))
    torch.manual_seed(0)
    model = build_model(cfg.model, catalog=ws.catalog, max_history=cfg.data.max_history).eval()
    save_model(model, tmp_path / "model", catalog=ws.catalog)
    single = evaluate_split(model, ws.split.test, ws.user_bucket, split="test", beam_size=10,
                            ks=(1, 5, 10), methods=("generative", "exact"), batch_size=7)
    assert len(single.metrics) == 2 * 2 * 3
    out = tmp_path / "two.json"
    torch.multiprocessing.spawn(_eval_worker, args=(2, _free_port(), str(run_dir), str(tmp_path / "model"), str(out)),
                                nprocs=2, join=True)
    two = json.loads(out.read_text())
    assert two["users"] == single.users == len(ws.split.test.targets)
    for key, value in single.metrics.items():
        assert two["metrics"][key] == pytest.approx(value, abs=1e-12), key


def test_torchrun_training_matches_one_process(quantized, tmp_path):
    """DDP with 2 gloo processes, each taking half of every global batch, follows the 1-process run."""
    run_dir, overrides = quantized
    common = [*overrides[1:], "model.tiger.dropout=0", "train.max_steps=6", "train.eval_every=6",
              "train.warmup_steps=2"]
    results = {}
    for world in (1, 2):
        copy = tmp_path / f"run{world}"
        shutil.copytree(run_dir, copy)
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
               "--standalone", "-m", "genrec.cli", "train", "-c", str(TINY), *common,
               f"run_dir={copy}"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
        results[world] = load_model(copy / "train" / "checkpoint-6").state_dict()
    for name, value in results[1].items():
        torch.testing.assert_close(results[2][name], value, atol=2e-5, rtol=1e-4, msg=name)
    # the comparison means something only if training moved the weights well beyond its tolerance: against the
    # initial weights (the trainer seeds with train.seed before building the model) they differ
    cfg = load_config(TINY, [*common, f"run_dir={run_dir}"])
    ws = load_workspace(cfg, RunDir(run_dir))
    torch.manual_seed(cfg.train.seed)
    init = build_model(cfg.model, catalog=ws.catalog, max_history=cfg.data.max_history).state_dict()
    assert torch.equal(init["item_codes"], results[1]["item_codes"])
    moved = [name for name, value in init.items() if value.is_floating_point()
             and (results[1][name] - value).abs().max() > 1e-3]
    assert "head.weight" in moved and len(moved) > len(init) // 2


def test_make_examples_follows_what_the_model_trains_on():
    codes = random_catalog(30, [4, 5, 3], seed=1)
    train = [np.arange(5), np.arange(3) + 10]
    ws = SimpleNamespace(split=SimpleNamespace(train=train), user_bucket=np.array([1, 2]))  # what it reads
    causal = tiny_model(codes, [4, 5, 3], causal_encoder=True)
    assert isinstance(make_examples(causal, ws, 4), TrainWindows)  # every position of a window in one pass
    assert isinstance(make_examples(tiny_model(codes, [4, 5, 3]), ws, 4), TrainExamples)
    sasrec = SASRec(cfg=SASRecConfig(d_model=8, num_heads=1, d_ff=8, layers=1), num_items=30, max_history=4)
    examples = make_examples(sasrec, ws, 4)
    assert isinstance(examples, TrainWindows) and examples.targets == 4 + 2


@pytest.mark.parametrize("world_size", [1, 2])
def test_equal_target_weights_make_an_epoch_the_plain_sum_over_targets(world_size):
    # windows from 1 to 8 targets, batched by length: "batch" weighs a short window's targets far more
    seqs = [np.arange(n) + 10 * i for i, n in enumerate([2, 2, 3, 9, 9, 9, 5, 4, 2, 9, 3, 6])]
    ex = TrainWindows(seqs, np.zeros(len(seqs), np.int64), max_history=8)
    mean_targets = 4 * ex.targets / len(ex)
    totals = {"batch": 0.0, "equal": 0.0}
    batches = ex.epoch_batches(0, 4, seed=0)
    for global_index in batches:
        for rank in range(world_size):
            index = global_index[rank::world_size]
            targets = ex.batch(index).targets
            item_loss = targets[targets >= 0].double()  # a per-target loss: the target's item index
            for mode in totals:  # what DDP's gradient average adds up to
                w = loss_weight(mode, len(item_loss), ex.num_targets(global_index), mean_targets, world_size)
                totals[mode] += w * float(item_loss.mean()) / world_size
    targets = ex.batch(np.concatenate(batches)).targets
    every = float(targets[targets >= 0].double().sum())
    assert totals["equal"] == pytest.approx(every / mean_targets)
    assert abs(totals["batch"] - every / mean_targets) > 1e-3 * totals["equal"]


def test_distill_inputs_are_the_teachers_sharpened_distribution():
    cfg = load_config(None, ["train.distill=0.4", "train.distill_temperature=0.5"])
    torch.manual_seed(0)
    teacher = SASRec(cfg=SASRecConfig(d_model=8, num_heads=1, d_ff=8, layers=1, dropout=0.0), num_items=30,
                     max_history=5).eval()
    batch = with_targets(random_batch(30, 4, seed=3), torch.tensor([1, 2, 3, 4]))
    assert distill_inputs(None, batch, cfg.train) == {}
    inputs = distill_inputs(teacher, batch, cfg.train)
    assert inputs["distill"] == 0.4
    torch.testing.assert_close(inputs["teacher"], teacher.next_item_probs(batch, 0.5))
    hot = teacher.next_item_probs(batch, 1.0)
    assert (inputs["teacher"].max(1).values > hot.max(1).values).all()  # below 1 the temperature sharpens


def test_optimizer_schedule_and_weight_decay_groups():
    cfg = load_config(None, ["train.lr=0.5", "train.warmup_steps=4", "train.max_steps=12", "train.weight_decay=0.1"])
    model = tiny_model(random_catalog(30, [4, 5, 3], seed=2), [4, 5, 3])
    opt, sched = make_optimizer(model, cfg)
    decay, other = opt.param_groups
    assert decay["weight_decay"] == 0.1 and other["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in model.named_parameters()
                                                        if p.ndim >= 2 and "emb" not in n}
    assert "head.weight" in {names[id(p)] for p in decay["params"]}
    assert "code_emb.weight" in {names[id(p)] for p in other["params"]}
    factor = sched.lr_lambdas[0]
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up
    assert factor(4) == 1.0 and factor(8) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert factor(12) == pytest.approx(0.0) and factor(20) == pytest.approx(0.0)  # cosine to 0 at max_steps
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.25)


def test_progress_without_a_terminal_is_a_plain_line_every_n_steps(caplog):
    """Off a terminal (a log file, CI) training reports every `every` steps: step, smoothed loss, rate, ETA."""
    import logging

    from genrec.train import Progress

    progress = Progress(True, total=10, start=0, every=5)
    assert progress.bar is None  # pytest's stderr is not a terminal
    with caplog.at_level(logging.INFO, logger="genrec.train"):
        for step in range(1, 11):
            progress.update(step, 2.0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("step 5/10  loss 2.0000") and "ETA" in lines[0]
    assert lines[1].startswith("step 10/10") and lines[1].endswith("ETA 0m00s")
    Progress(False, total=10, start=0, every=1).update(1, 1.0)  # other processes print nothing
