"""Which semantic IDs: the default TIGER recipe on Amazon Beauty with each quantizer, same seed, selection on
validation, every stage after collab from scratch.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000 \
        python bench/semantic_ids.py [-c configs/beauty.yaml] [--only NAME ...] [--threads N] [--out FILE]
    python bench/semantic_ids.py --merge part1.json part2.json [--out bench/results/semantic_ids.json]

Rows: random IDs (a floor), RQ-KMeans on text, RQ-KMeans on the collaborative embeddings (the default), RQ-VAE on
text, RQ-VAE on text with the collaborative term. The first row runs prepare, embed and collab in
runs/bench-sid-base; every row copies those stages (their stamps match, so they are not rerun) and runs
quantize, train and evaluate in runs/bench-sid-<row>. `--only` runs some rows (e.g. two halves side by side,
one core each with --threads 1, once runs/bench-sid-base exists) and `--merge` joins their files. `--reuse
rqkmeans-collab=runs/bench-beauty --only` takes a row from a finished run of exactly that row's recipe (checked:
every setting but the run directory and the thread count) instead of training it again. JSON: "rows", each with "name", "quantizer",
"inputs", the codebook health ("usage", "perplexity" per level, "collision_rate", "largest_group"),
"valid/recall@10", "valid/ndcg@10" and the test metrics "test/recall@5" ... "test/ndcg@10" (history removed; the
same under "with_history/..." with history kept), and the wall time per stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from meta import machine, versions

from genrec.config import load_config, to_dict
from genrec.distributed import DistInfo
from genrec.pipeline import run
from genrec.rundir import STAGES, RunDir

ROWS = {  # name -> (quantizer, inputs, overrides)
    "random": ("random", "text", ["quantize.method=random"]),
    "rqkmeans-text": ("rqkmeans", "text", ["quantize.inputs=text"]),
    "rqkmeans-collab": ("rqkmeans", "collab", []),
    "rqvae-text": ("rqvae", "text", ["quantize.method=rqvae", "quantize.inputs=text"]),
    "rqvae-text-collab": ("rqvae", "text+collab", ["quantize.method=rqvae", "quantize.inputs=text",  # text in,
                                                   # the collaborative embeddings in the loss
                                                   "quantize.collab_weight=0.5"]),
}
SHARED = ("prepare", "embed", "collab")
METRICS = [f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10)]


def run_row(config: str, name: str, extra: list[str]) -> dict:
    quantizer, inputs, overrides = ROWS[name]
    base = Path("runs/bench-sid-base")
    if not all((base / s / "stage.json").is_file() for s in SHARED):
        run(load_config(config, [f"run_dir={base}", *extra]), DistInfo(), stages=SHARED, force=True)
    run_dir = Path(f"runs/bench-sid-{name}")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    for stage in SHARED:
        shutil.copytree(base / stage, run_dir / stage)
    cfg = load_config(config, [f"run_dir={run_dir}", *overrides, *extra])
    wall, last = {}, [time.perf_counter()]

    def on_stage(stage: str, ran: bool) -> None:
        now = time.perf_counter()
        wall[stage] = round(now - last[0], 1)
        last[0] = now

    run(cfg, DistInfo(), stages=STAGES, on_stage=on_stage)
    return row_from_run(name, run_dir, wall)


def same_recipe(a, b) -> bool:
    """Whether two configs train the same model (run directory and thread count aside)."""
    keep = lambda c: {k: v for k, v in to_dict(c).items() if k != "run_dir"}  # noqa: E731
    x, y = keep(a), keep(b)
    for d in (x, y):
        d["train"].pop("num_threads")
    return x == y


def reuse_row(config: str, spec: str, extra: list[str]) -> dict:
    """NAME=RUN_DIR: the row of an earlier run of exactly that row's recipe (checked), e.g. the default recipe's
    own benchmark run, instead of training it again."""
    name, run_dir = spec.split("=", 1)
    if name not in ROWS:
        raise SystemExit(f"--reuse {spec}: {name} is not a row ({', '.join(ROWS)})")
    want = load_config(config, [f"run_dir={run_dir}", *ROWS[name][2], *extra])
    if not same_recipe(load_config(Path(run_dir) / "config.yaml"), want):
        raise SystemExit(f"--reuse {spec}: {run_dir} was trained with another recipe than the row {name}")
    return row_from_run(name, Path(run_dir), {})


def row_from_run(name: str, run_dir: Path, wall: dict) -> dict:
    quantizer, inputs, overrides = ROWS[name]
    rd = RunDir(run_dir)
    results = json.loads(rd.results.read_text())
    health = json.loads((rd.stage("quantize") / "summary.json").read_text())
    m, kept = results["metrics"], results.get("metrics_with_history", {})
    row = {"name": name, "quantizer": quantizer, "inputs": inputs, "overrides": overrides,
           "collab_term": next((float(o.split("=")[1]) for o in overrides if "collab_weight" in o), 0.0),
           "usage": [lv["usage"] for lv in health["levels"]], "perplexity": [lv["perplexity"] for lv in health["levels"]],
           "collision_rate": 1 - health["unique_fraction"], "largest_group": health["largest_group"],
           "valid/recall@10": m["valid/generative/recall@10"], "valid/ndcg@10": m["valid/generative/ndcg@10"],
           **{f"test/{k}": m[f"test/generative/{k}"] for k in METRICS},
           **{f"with_history/test/{k}": kept.get(f"test/generative/{k}") for k in METRICS},
           "wall_seconds": wall, "best_step": json.loads((rd.stage("train") / "summary.json").read_text())["best_step"]}
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, (list, dict))}), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", default="configs/beauty.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every row")
    p.add_argument("--only", nargs="*", default=None, choices=list(ROWS), help="rows to run (default: all)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="join the rows of earlier files")
    p.add_argument("--reuse", nargs="*", default=[], metavar="NAME=RUN_DIR",
                   help="take a row from a finished run of exactly its recipe (checked) instead of training it")
    p.add_argument("--out", default="bench/results/semantic_ids.json")
    args = p.parse_args()
    command = " ".join([os.path.basename(sys.executable), *sys.argv])
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        rows = sorted((r for part in parts for r in part["rows"]), key=lambda r: list(ROWS).index(r["name"]))
        out = {"command": command, "merged_from": args.merge, "parts": [{k: v for k, v in part.items() if k != "rows"}
                                                                        for part in parts], "rows": rows}
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
        code_versions = versions()
        rows = [reuse_row(args.config, spec, args.overrides) for spec in args.reuse]
        if args.only is None or args.only:
            rows += [run_row(args.config, name, args.overrides) for name in (args.only or list(ROWS))
                     if name not in {r["name"] for r in rows}]
        out = {"command": command, "machine": machine(), "versions": code_versions, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
