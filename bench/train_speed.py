"""Training throughput probe: targets per second of a recipe's model on a prepared run directory.

    python bench/train_speed.py --run-dir runs/bench-beauty [-c configs/beauty.yaml] [overrides ...] [--steps 10]

Times `--steps` optimizer steps after 4 warm-up steps on the first batches of epoch 0 and prints targets/s
(a target is one next item to predict), the teacher's forward pass included with train.distill > 0. The run
directory must hold prepare and quantize outputs (and collab's model for distillation).
"""

from __future__ import annotations

import argparse
import time

import torch

from genrec import precision
from genrec.config import load_config
from genrec.models.registry import MODELS, build_model
from genrec.rundir import RunDir
from genrec.train import load_teacher, make_examples, make_optimizer, train_step
from genrec.workspace import load_workspace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", default="configs/beauty.yaml", help="recipe (default configs/beauty.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.tiger.decoder_layers=4")
    p.add_argument("--run-dir", default="runs/bench-beauty", help="run directory with prepare and quantize done")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    run = RunDir(args.run_dir)
    ws = load_workspace(cfg, run, with_sids=MODELS[cfg.model.kind].uses_sids)
    torch.manual_seed(0)
    model = build_model(cfg.model, catalog=ws.catalog, max_history=cfg.data.max_history)
    opt, _ = make_optimizer(model, cfg)
    examples = make_examples(model, ws, cfg.data.max_history)
    batches = examples.epoch_batches(0, cfg.train.batch_size, 0)
    teacher = load_teacher(run, ws, "cpu") if cfg.train.distill > 0 and model.learns_from_teacher else None
    autocast = precision.autocast(cfg.train.dtype, "cpu")
    targets, seconds = 0, 0.0
    for i, index in enumerate(batches[: 4 + args.steps]):
        batch = examples.batch(index)
        start = time.perf_counter()
        train_step(model, batch, t=cfg.train, teacher=teacher, weight=1.0, opt=opt, sched=None, autocast=autocast)
        if i >= 4:
            seconds += time.perf_counter() - start
            targets += examples.num_targets(index)
    print(f"{' '.join(args.overrides) or '(recipe as is)'}: {targets / seconds:.1f} targets/s "
          f"({targets} targets in {seconds:.1f} s, batch {cfg.train.batch_size})")


if __name__ == "__main__":
    main()
