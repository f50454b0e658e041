"""End-to-end benchmark: the default recipe on Amazon Beauty, every stage from scratch, timed.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000 \
        python bench/beauty.py [-c configs/beauty.yaml] [overrides ...] [--out bench/results/beauty.json]

Runs prepare, embed, quantize, train and evaluate into a fresh run directory (runs/bench-<recipe name>,
deleted first), then writes the wall time of each stage, the peak resident memory, and every metric as flat
keys "{split}/{method}/{metric}@{k}" (split: valid, test) together with the command, machine and versions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import genrec
from genrec.config import load_config, to_dict
from genrec.distributed import DistInfo
from genrec.evaluate import format_table
from genrec.pipeline import STAGES, run


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) // 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mb": mem, "platform": platform.platform()}


def versions() -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True).stdout.strip())
    return {"python": platform.python_version(), "torch": torch.__version__, "genrec": genrec.__version__,
            "genrec_commit": commit, "tree_modified": dirty}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", default="configs/beauty.yaml", help="recipe (default configs/beauty.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.seed=1")
    p.add_argument("--out", default="bench/results/beauty.json", help="where to write the JSON result")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    overrides = [f"run_dir=runs/bench-{Path(args.config).stem}", *args.overrides]
    cfg = load_config(args.config, overrides)
    code_versions = versions()  # the code that runs, before anything changes
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    wall: dict[str, float] = {}
    last = [time.perf_counter()]

    def on_stage(stage: str, ran: bool) -> None:
        now = time.perf_counter()
        wall[stage] = round(now - last[0], 1)
        last[0] = now

    start = time.perf_counter()
    run(cfg, DistInfo(), stages=STAGES, force=True, on_stage=on_stage)
    wall["total"] = round(time.perf_counter() - start, 1)
    results = json.loads((Path(cfg.run_dir) / "evaluate" / "results.json").read_text())
    train = json.loads((Path(cfg.run_dir) / "train" / "summary.json").read_text())
    out = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
           "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "machine": machine(), "versions": code_versions,
           "seed": cfg.train.seed, "wall_seconds": wall,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "metrics": results["metrics"], "omitted": results["omitted"], "train": train,
           "config": to_dict(cfg)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(format_table(results["metrics"], cfg.evaluate.ks))
    print("wall seconds:", wall, "peak RSS MB:", out["peak_rss_mb"])


if __name__ == "__main__":
    main()
