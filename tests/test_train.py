"""Training: exact resume from a checkpoint, and 2-process DDP / evaluation against 1 process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from genrec.checkpoint import load_model
from genrec.cli import main
from genrec.config import load_config
from genrec.distributed import DistInfo
from genrec.evaluate import evaluate_split
from genrec.pipeline import run_stage
from genrec.workspace import load_workspace

from conftest import TINY


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
                             "train.log_every=1", "model.dropout=0.3", "train.patience=0"])
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
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    args = ["train", "-c", str(TINY), *overrides[1:], f"run_dir={copy}", "train.max_steps=4", "train.eval_every=2",
            "train.log_every=1", "train.distill=0.5"]
    assert main(args) == 0
    assert sorted(losses(copy / "train" / "log.jsonl")) == [1, 2, 3, 4]
    assert load_model(copy / "train" / "best").method == "generative"
    shutil.rmtree(copy / "collab" / "sasrec" / "best")
    shutil.rmtree(copy / "train")
    capsys.readouterr()
    assert main(args) != 0
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
    ws = load_workspace(cfg, __import__("pathlib").Path(run_dir))
    model = load_model(model_dir)
    r = evaluate_split(model, ws.split.test, ws.user_bucket, split="test", beam_size=10, ks=(1, 5, 10),
                       batch_size=7, rank=dist.rank, world_size=dist.world_size, all_reduce=all_reduce_sum)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"metrics": r.metrics, "users": r.users}, f)
    cleanup()


def test_two_process_evaluation_equals_one_process(quantized, tmp_path):
    run_dir, overrides = quantized
    cfg = load_config(TINY, [*overrides[1:], f"run_dir={run_dir}"])
    ws = load_workspace(cfg, run_dir)
    torch.manual_seed(0)
    from genrec.checkpoint import save_model
    from genrec.train import build_model

    model = build_model(cfg.model, ws, cfg.data.max_history).eval()
    save_model(model, tmp_path / "model")
    single = evaluate_split(model, ws.split.test, ws.user_bucket, split="test", beam_size=10,
                            ks=(1, 5, 10), batch_size=7)
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
    common = [*overrides[1:], "model.dropout=0", "train.max_steps=6", "train.eval_every=6", "train.warmup_steps=2"]
    results = {}
    for world in (1, 2):
        copy = tmp_path / f"run{world}"
        shutil.copytree(run_dir, copy)
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
               f"--master_port={_free_port()}", "-m", "genrec.cli", "train", "-c", str(TINY), *common,
               f"run_dir={copy}"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
        results[world] = load_model(copy / "train" / "checkpoint-6").state_dict()
    for name, value in results[1].items():
        torch.testing.assert_close(results[2][name], value, atol=2e-5, rtol=1e-4, msg=name)
    assert not np.allclose(results[1]["head.weight"].numpy(), 0)
