"""New-item benchmark: a recipe under the new-item protocol on Amazon Beauty, every stage from scratch, with a
content-only baseline beside it.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000 \
        python bench/cold.py [-c configs/beauty.yaml] [overrides ...] [--threads N] [--out bench/results/cold.json]

The protocol (`genrec.data.cold`): `data.cold_items` of the catalogue (5% by default, a seeded sample) is held
out as new items: every interaction with them leaves the training part, so neither the collaborative embeddings,
the quantizer's fit nor the model has seen them; they stay in the catalogue, and the validation and test users
whose target is one of them (or any other item no training sequence holds) are the cold slice. The recipe runs
with the hybrid's dense head by default (`model.tiger.text_input`, `model.tiger.dense_weight`), since a
generative model alone hardly ever generates an item it never saw, and every method it offers is evaluated.
The content baseline ranks items by the cosine of their text embedding with the mean of the user's last three
history items' (no training). Keys: "{split}/{method}/{in|cold}/{metric}@{k}" per slice and
"{split}/{method}/{metric}@{k}" for all users, in "metrics" (history removed) and "metrics_with_history" (kept);
"cold_users" per split; "wall_seconds" per stage and in total.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from beauty import run_recipe
from meta import machine, versions

from genrec.config import load_config
from genrec.data.cold import held_out_items
from genrec.data.prepare import load_prepared
from genrec.distributed import DistInfo
from genrec.evaluation.evaluator import evaluate_workspace, format_table
from genrec.models.content import ContentBaseline
from genrec.rundir import RunDir
from genrec.workspace import load_workspace

PROTOCOL = ["run_dir=runs/bench-cold", "data.cold_items=0.05", "model.tiger.text_input=true",
            "model.tiger.dense_weight=1.0", "evaluate.methods=[generative,dense,hybrid,hybrid-100]"]


def content_metrics(config: str, overrides: list[str]) -> tuple[dict, dict, float]:
    """The content baseline on the run's validation and test users, both protocols, with cold slices."""
    start = time.perf_counter()
    cfg = load_config(config, overrides)
    ws = load_workspace(cfg, RunDir(cfg.run_dir), with_sids=False)
    model = ContentBaseline(torch.from_numpy(ws.catalog.text), max_history=cfg.data.max_history)
    out: dict[str, dict] = {"metrics": {}, "metrics_with_history": {}}
    for split in ("valid", "test"):
        for key, exclude in (("metrics", True), ("metrics_with_history", False)):
            r = evaluate_workspace(model, ws, cfg.evaluate, DistInfo(), split=split, beam_size=cfg.evaluate.beam_size,
                                   ks=cfg.evaluate.ks, methods=("content",), exclude_history=exclude, cold_slices=True)
            out[key].update(r.metrics)
    return out["metrics"], out["metrics_with_history"], time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", default="configs/beauty.yaml", help="recipe (default configs/beauty.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides after the protocol's own (e.g. data.cold_items=0.1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="bench/results/cold.json", help="JSON result")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    code_versions = versions()
    overrides = PROTOCOL + args.overrides
    result = run_recipe(args.config, overrides)
    metrics, with_history, seconds = content_metrics(args.config, overrides)
    cfg = load_config(args.config, overrides)
    run = RunDir(cfg.run_dir)
    results = json.loads(run.results.read_text())
    held = held_out_items(load_prepared(run.prepared), cfg.data)
    print(format_table({k: v for k, v in metrics.items() if k.split("/")[-1] in ("recall@10", "ndcg@10")} |
                       {k: v for k, v in results["metrics"].items() if k.split("/")[-1] in ("recall@10", "ndcg@10")},
                       (10,)))
    out = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
           "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "machine": machine(), "versions": code_versions,
           "held_out_items": int(held.sum()), "num_items": int(len(held)), "cold_users": results["cold_users"],
           "users": results["users"], "wall_seconds": {**result["wall_seconds"], "content": round(seconds, 1)},
           "metrics": {**result["metrics"], **metrics},
           "metrics_with_history": {**result["metrics_with_history"], **with_history},
           "omitted": result["omitted"], "train": result["train"], "config": result["config"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
