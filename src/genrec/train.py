"""Training of any model (`model.kind`) on next-item prediction, selected on validation.

Every position >= 1 of every training sequence is a target: one example each, or whole sequence windows for a
model that trains every position in one pass (`all_positions`). Steps are counted in global batches of
`train.batch_size` examples, split evenly across processes under torchrun (DDP). Every `eval_every` steps the
model is evaluated on *all* validation users with its default ranking method (for TIGER, constrained beam
search with `valid_beam_size` beams); the best one (by `select_metric`) is kept in `best/`, and training stops after `patience` evaluations without improvement,
at `max_steps`, or after `max_minutes`. A checkpoint-<step>/ carries everything needed to resume exactly
(weights, optimizer, scheduler, data cursor, RNG state); a killed run resumes from the latest one.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from genrec import precision
from genrec.config import Config, TrainConfig
from genrec.data.batches import Batch, TrainExamples, TrainWindows
from genrec.distributed import DistInfo, barrier
from genrec.errors import GenrecError
from genrec.evaluation.evaluator import evaluate_workspace, methods_of
from genrec.files import save_json, write_bytes
from genrec.models import checkpoint as ckpt
from genrec.models.registry import MODELS, build_model
from genrec.plots import TRAINING_CURVES, training_curves
from genrec.rundir import MODEL, RunDir
from genrec.workspace import Workspace, load_workspace

logger = logging.getLogger(__name__)


def make_examples(model: nn.Module, ws: Workspace, max_history: int) -> TrainExamples | TrainWindows:
    """A causal model trains every target of a sequence in one pass; otherwise one example per target."""
    maker = TrainWindows if model.all_positions else TrainExamples
    return maker(ws.split.train, ws.user_bucket, max_history)


def loss_weight(mode: str, targets: int, batch_targets: int, mean_targets: float, world_size: int) -> float:
    """The factor on one process's mean loss over its `targets` (of the global batch's `batch_targets`). DDP
    averages gradients over processes; this weight makes that average the mean over the global batch's targets,
    as in one process ("batch"), or their sum over the targets of an average batch (`mean_targets`), so that every
    target of an epoch weighs the same whatever its batch ("equal")."""
    return targets * world_size / (batch_targets if mode == "batch" else mean_targets)


def make_optimizer(model: nn.Module, cfg: Config) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with weight decay on matrices (embeddings aside); a parameter with an `lr_scale` attribute trains at
    that multiple of the learning rate, without decay."""
    scaled = [p for p in model.parameters() if hasattr(p, "lr_scale")]
    rest = [(n, p) for n, p in model.named_parameters() if not hasattr(p, "lr_scale")]
    decay = [p for n, p in rest if p.ndim >= 2 and "emb" not in n]
    other = [p for n, p in rest if not (p.ndim >= 2 and "emb" not in n)]
    t = cfg.train
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": other, "weight_decay": 0.0}]
    groups += [{"params": [p], "weight_decay": 0.0, "lr": t.lr * p.lr_scale} for p in scaled]
    opt = torch.optim.AdamW(groups, lr=t.lr, betas=(0.9, t.adam_beta2))

    def schedule(step: int) -> float:  # linear warm-up, then cosine to 0 at max_steps
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _step_of(line: str) -> float:
    """The step of a log line; a line a kill cut short counts as after every step (it is dropped on resume)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class TrainLog:
    """JSON lines (and TensorBoard scalars when tensorboard is installed), main process only."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0) -> None:
        """`resume_step`: training resumes after this step, so lines of later steps (written before the kill,
        after the last checkpoint) are dropped; they will be written again."""
        self.enabled, self.path, self.tb = enabled, out_dir / "log.jsonl", None
        if enabled and self.path.exists():
            write_bytes(self.path, "".join(line + "\n" for line in self.path.read_text().splitlines()
                                           if _step_of(line) <= resume_step).encode())
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                pass

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Progress:
    """Main process only: on a terminal a progress bar with the loss and an ETA; otherwise (a log file, CI) a
    plain line every `every` steps with the same."""

    def __init__(self, enabled: bool, *, total: int, start: int, every: int) -> None:
        self.enabled, self.total, self.every, self.start = enabled, total, every, start
        self.loss, self.began, self.bar = float("nan"), time.perf_counter(), None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, leave=False)

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        self.loss = loss if self.loss != self.loss else 0.98 * self.loss + 0.02 * loss  # smoothed
        if self.bar is not None:
            self.bar.update(1)
            if step % 10 == 0:
                self.bar.set_postfix(loss=f"{self.loss:.4f}", refresh=False)
        elif step % self.every == 0:
            rate = (step - self.start) / max(time.perf_counter() - self.began, 1e-9)
            eta = (self.total - step) / max(rate, 1e-9)
            logger.info("step %d/%d  loss %.4f  %.1f steps/s  ETA %dm%02ds", step, self.total, self.loss, rate,
                        eta // 60, eta % 60)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def validate(model: nn.Module, ws: Workspace, cfg: Config, dist: DistInfo) -> dict[str, float]:
    """The model's first ranking method (what selection reads) on all validation users, at the training's
    validation beam."""
    t = cfg.train
    ks = tuple(k for k in cfg.evaluate.ks if k <= t.valid_beam_size)
    return evaluate_workspace(model, ws, cfg.evaluate, dist, split="valid", beam_size=t.valid_beam_size, ks=ks,
                              methods=tuple(model.methods[:1])).metrics


def load_teacher(run: RunDir, ws: Workspace, device: str) -> nn.Module:
    """The collab stage's selected SASRec, the teacher of `train.distill`."""
    path = run.collab_model
    if not (path / "model.safetensors").is_file():
        raise GenrecError(f"train.distill needs the collab stage's model, but {path} has none; "
                          f"run 'genrec collab' (or set train.distill=0)")
    teacher = ckpt.load_model(path, remake="genrec collab --force")
    if not hasattr(teacher, "next_item_probs"):
        raise GenrecError(f"{path} holds no model that gives a next-item distribution; rerun 'genrec collab --force'")
    ckpt.check_catalog(path, ws.catalog, remake="genrec collab --force")
    return teacher.to(device).eval()


def distill_inputs(teacher: nn.Module | None, batch: Batch, t: TrainConfig) -> dict[str, Any]:
    """The model's distillation arguments for one batch: none without a teacher."""
    if teacher is None:
        return {}
    return {"teacher": teacher.next_item_probs(batch, t.distill_temperature), "distill": t.distill}


def train_step(net: nn.Module, batch: Batch, *, t: TrainConfig, teacher: nn.Module | None, weight: float,
               opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler | None,
               autocast: AbstractContextManager) -> Tensor:
    """One optimizer step on `batch` (the loss scaled by `weight` before backward); returns the unscaled loss."""
    with autocast:
        loss = net(batch, label_smoothing=t.label_smoothing, **distill_inputs(teacher, batch, t)).loss
    (loss * weight).backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    if sched is not None:
        sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def train(cfg: Config, run: RunDir, out_dir: Path, dist: DistInfo) -> dict[str, Any]:
    """Train `cfg.model` into out_dir (resuming from its latest checkpoint), leaving the selected model in
    out_dir/best."""
    t = cfg.train
    if t.batch_size % dist.world_size:
        raise GenrecError(f"train.batch_size={t.batch_size} must be divisible by the {dist.world_size} processes")
    ws = load_workspace(cfg, run, with_sids=MODELS[cfg.model.kind].uses_sids)
    torch.manual_seed(t.seed)
    model = build_model(cfg.model, catalog=ws.catalog, max_history=cfg.data.max_history)
    methods_of(model, cfg.evaluate.methods)  # a method the model cannot offer fails now, not after training
    examples = make_examples(model, ws, cfg.data.max_history)
    if len(examples) == 0:
        raise GenrecError("the training split has no examples (every user needs at least 4 items for "
                          "leave-one-out); check the data or lower data.min_interactions")
    opt, sched = make_optimizer(model, cfg)
    state = {"step": 0, "epoch": 0, "cursor": 0, "best": -1.0, "best_step": 0, "bad_evals": 0, "seconds": 0.0}
    latest = ckpt.latest_checkpoint(out_dir)
    if latest is not None:
        saved = ckpt.load_trainer_state(latest)
        model.load_state_dict(ckpt.load_model(latest).state_dict())
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
        ckpt.set_rng_state(saved["rng"])
        logger.info("resuming from %s (step %d)", latest, state["step"])
    teacher = load_teacher(run, ws, dist.device) if t.distill > 0 and model.learns_from_teacher else None
    net = DistributedDataParallel(model) if dist.world_size > 1 else model
    autocast = precision.autocast(t.dtype, torch.device(dist.device).type)
    log = TrainLog(out_dir, dist.is_main, resume_step=state["step"])
    metric_key = f"valid/{model.methods[0]}/{t.select_metric}"
    batches = examples.epoch_batches(state["epoch"], t.batch_size, t.seed, t.batch_order)
    mean_targets = t.batch_size * examples.num_targets(np.arange(len(examples))) / len(examples)
    logger.info("training on %d %s (%d batches of %d per epoch), %d parameters", len(examples),
                "sequence windows" if model.all_positions else "examples", len(batches), t.batch_size,
                sum(p.numel() for p in model.parameters()))
    window_loss, window_examples, window_start = 0.0, 0, time.perf_counter()
    progress = Progress(dist.is_main, total=t.max_steps, start=state["step"], every=t.log_every)
    run_start = time.perf_counter() - state["seconds"]
    stop = False
    while not stop:
        if state["cursor"] >= len(batches):
            state["epoch"], state["cursor"] = state["epoch"] + 1, 0
            batches = examples.epoch_batches(state["epoch"], t.batch_size, t.seed, t.batch_order)
        global_index = batches[state["cursor"]]
        index = global_index[dist.rank :: dist.world_size]
        state["cursor"] += 1
        model.train()
        batch = examples.batch(index).to(dist.device)
        targets = examples.num_targets(index)
        weight = loss_weight(t.target_weights, targets, examples.num_targets(global_index), mean_targets,
                             dist.world_size)
        loss = train_step(net, batch, t=t, teacher=teacher, weight=weight, opt=opt, sched=sched, autocast=autocast)
        state["step"] += 1
        step = state["step"]
        window_loss += float(loss) * targets
        progress.update(step, float(loss))
        window_examples += targets
        state["seconds"] = time.perf_counter() - run_start
        out_of_time = t.max_minutes > 0 and state["seconds"] >= 60 * t.max_minutes
        if step % t.log_every == 0:
            elapsed = time.perf_counter() - window_start
            log.write(step, {"train/loss": window_loss / window_examples, "train/lr": sched.get_last_lr()[0],
                             "train/targets_per_s": window_examples * dist.world_size / elapsed,
                             "train/epoch": state["epoch"] + state["cursor"] / len(batches)})
            window_loss, window_examples, window_start = 0.0, 0, time.perf_counter()
        if step % t.eval_every and step < t.max_steps and not out_of_time:
            continue
        metrics = validate(model, ws, cfg, dist)
        value = metrics[metric_key]
        log.write(step, metrics)
        logger.info("step %d: %s = %.4f (best %.4f at step %d)", step, metric_key, value, state["best"],
                    state["best_step"])
        if value > state["best"]:
            state.update(best=value, best_step=step, bad_evals=0)
            if dist.is_main:
                ckpt.save_model(model, out_dir / MODEL, catalog=ws.catalog)
        else:
            state["bad_evals"] += 1
        stop = (step >= t.max_steps or out_of_time or (t.patience > 0 and state["bad_evals"] >= t.patience))
        if dist.is_main:
            ckpt.save_model(model, out_dir / f"checkpoint-{step}", catalog=ws.catalog, extra_state={
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": dict(state),
                "rng": ckpt.rng_state()})
            old = sorted((int(p.name.split("-")[1]), p) for p in out_dir.glob("checkpoint-*"))
            for _, path in old[: -t.keep_checkpoints]:
                shutil.rmtree(path)
        barrier()
        window_start = time.perf_counter()
    log.close()
    progress.close()
    summary = {"steps": state["step"], "epochs": state["epoch"] + state["cursor"] / len(batches),
               "best_step": state["best_step"], f"best_{metric_key}": state["best"], "seconds": state["seconds"],
               "examples": len(examples)}
    if dist.is_main:
        save_json(out_dir / "summary.json", summary)
        if log.path.exists():
            training_curves(log.path, out_dir / TRAINING_CURVES)
    return summary
