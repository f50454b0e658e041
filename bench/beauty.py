"""End-to-end benchmark: the default recipe and the SASRec baseline on Amazon Beauty, every stage from scratch.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000 \
        python bench/beauty.py [-c configs/beauty.yaml] [overrides ...] [--baseline configs/beauty-sasrec.yaml]
                               [--seeds 0 1 2 [--reuse bench/results/beauty.json]] [--threads N] [--out ...]
    python bench/beauty.py --merge bench/results/beauty.json beauty_seed1.json ... [--out bench/results/beauty_seeds.json]

Runs every stage (prepare, embed, collab, quantize, train, evaluate) of each recipe into a fresh run directory
(runs/bench-<recipe name>[-seed<k>], deleted first), then writes the wall time of each stage (of the first
recipe; the baseline's under "baseline"), the peak resident memory, and every metric of both as flat keys
"{split}/{method}/{metric}@{k}" (split: valid, test; method: generative, sasrec) together with the command,
machine and versions. Every metric is reported under both protocols: "metrics" with the user's history items
removed from the ranking, "metrics_with_history" with them kept (the protocol of most published numbers).
With --seeds, each seed runs both recipes and the metrics become mean, std and values
(bench/results/beauty_seeds.json); --reuse takes one of those seeds from an earlier single-seed result of the same
recipes and settings (checked) instead of running it again. --merge builds the same file from single-seed results
of one recipe that differ only in their seeds and thread counts (e.g. seeds run side by side, one core each with
--threads 1), or in an early-stopping patience that never stopped training; for a SASRec recipe it keeps the SASRec
keys, which are otherwise the baseline's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import torch
from meta import machine, versions

from genrec.config import load_config, to_dict
from genrec.distributed import DistInfo
from genrec.evaluation.evaluator import format_results
from genrec.pipeline import run
from genrec.rundir import STAGES, RunDir


def run_recipe(config: str, overrides: list[str]) -> dict:
    """Every stage of one recipe from scratch in runs/bench-<recipe>[-seed<k>]: wall time per stage, metrics."""
    cfg = load_config(config, overrides)
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
    run_dir = RunDir(cfg.run_dir)
    results = json.loads(run_dir.results.read_text())
    train = json.loads((run_dir.stage("train") / "summary.json").read_text())
    print(format_results(results, cfg.evaluate.ks))
    print(f"{config}: wall seconds {wall}", flush=True)
    return {"config_file": config, "run_dir": str(cfg.run_dir), "seed": cfg.train.seed, "wall_seconds": wall,
            "metrics": results["metrics"], "metrics_with_history": results.get("metrics_with_history", {}),
            "omitted": results["omitted"], "train": train, "config": to_dict(cfg)}


def recipe_overrides(recipe: str, main: str, extra: list[str], seed: int | None) -> list[str]:
    overrides = [f"run_dir=runs/bench-{Path(recipe).stem}" + (f"-seed{seed}" if seed is not None else "")]
    overrides += extra if recipe == main else []
    # a seed drives every random choice of the pipeline: the collaborative model, k-means and TIGER
    return overrides + ([f"{s}.seed={seed}" for s in ("collab", "quantize", "train")] if seed is not None else [])


def reused_row(path: str, recipes: list[str], extra: list[str]) -> tuple[int, list[dict]]:
    """One seed's results from a single-seed result file of the same recipes and settings, instead of a rerun:
    (its seed, its row of per-recipe results). Exits with a one-line message if the settings differ."""
    try:
        saved = json.loads(Path(path).read_text())
        seed, parts = saved["seed"], [saved] + ([saved["baseline"]] if "baseline" in saved else [])
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"--reuse {path}: not a single-seed result of bench/beauty.py ({e}); drop --reuse to rerun every seed")
    if len(parts) < len(recipes):
        sys.exit(f"--reuse {path}: it holds {len(parts)} recipe(s), this run has {len(recipes)}; drop --reuse")
    parts = parts[: len(recipes)]
    row = []
    for recipe, part in zip(recipes, parts):
        expected = to_dict(load_config(recipe, recipe_overrides(recipe, recipes[0], extra, seed)))
        got = dict(part["config"])
        expected.pop("run_dir"), got.pop("run_dir", None)
        if got != expected:
            diff = sorted(f"{k}.{kk}" for k in expected for kk in expected[k]
                          if isinstance(expected[k], dict) and got.get(k, {}).get(kk) != expected[k][kk])
            sys.exit(f"--reuse {path}: its {recipe} settings differ from this run's at seed {seed} "
                     f"({', '.join(diff) or 'top-level keys'}); drop --reuse to rerun that seed")
        method = "generative" if part is saved else "sasrec"
        row.append({"config_file": recipe, "seed": seed, "wall_seconds": part["wall_seconds"],
                    "metrics": {k: v for k, v in saved["metrics"].items() if k.split("/")[1] == method},
                    "metrics_with_history": {k: v for k, v in saved.get("metrics_with_history", {}).items()
                                             if k.split("/")[1] == method},
                    "train": part["train"], "config": part["config"],
                    "reused_from": {"path": path, "command": saved["command"], "versions": saved["versions"]}})
    return seed, row


def summarize(per_seed: list[dict]) -> dict:
    """mean and (sample) standard deviation of every metric over seeds."""
    keys = sorted(set.intersection(*(set(r["metrics"]) for r in per_seed)))
    out = {}
    for key in keys:
        values = [r["metrics"][key] for r in per_seed]
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
        out[key] = {"mean": mean, "std": std, "values": values}
    return out


def settings(part: dict) -> dict:
    """What decided a single-seed result: its config less the seeds, the run directory and the torch threads (how
    fast, not what)."""
    drop = {"seed", "num_threads"}
    return {k: {kk: vv for kk, vv in v.items() if kk not in drop} if isinstance(v, dict) else v
            for k, v in part["config"].items() if k != "run_dir"}


def alike(a: dict, b: dict) -> bool:
    """Two single-seed results of one recipe: the same settings, where an early-stopping patience may differ only
    when both trainings ran their whole schedule (it never acted)."""
    ran_out = lambda p: p["train"]["steps"] >= p["config"]["train"]["max_steps"]  # noqa: E731
    sa, sb = settings(a), settings(b)
    if ran_out(a) and ran_out(b):
        for s in (sa, sb):
            s["train"].pop("patience", None)
    return sa == sb


def merge(paths: list[str], out_path: str) -> None:
    """The seeds file from single-seed results of the main recipe that are `alike`."""
    parts = [json.loads(Path(path).read_text()) for path in paths]
    for path, part in zip(paths[1:], parts[1:]):
        if not alike(part, parts[0]):
            sys.exit(f"--merge: {path} has other settings than {paths[0]} (beyond the seeds); merge like with like")
    baseline = "" if parts[0]["config"]["model"]["kind"] == "sasrec" else "sasrec"  # a SASRec recipe keeps its own
    main_only = lambda m: {k: v for k, v in m.items() if k.split("/")[1] != baseline}  # noqa: E731
    out = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "merged_from": paths,
           "machine": [p["machine"] for p in parts], "versions": [p["versions"] for p in parts],
           "seeds": [p["seed"] for p in parts], "wall_seconds": [p["wall_seconds"] for p in parts],
           "metrics": summarize([{"metrics": main_only(p["metrics"])} for p in parts]),
           "metrics_with_history": summarize([{"metrics": main_only(p["metrics_with_history"])} for p in parts]),
           "runs": [{k: p[k] for k in ("command", "seed", "wall_seconds", "train", "config")} for p in parts]}
    Path(out_path).write_text(json.dumps(out, indent=2))
    print(f"wrote {out_path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", default="configs/beauty.yaml", help="recipe (default configs/beauty.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.seed=1")
    p.add_argument("--baseline", default="configs/beauty-sasrec.yaml",
                   help="recipe run after it, whose metrics join the same JSON ('' to skip)")
    p.add_argument("--seeds", type=int, nargs="*", default=None,
                   help="run both recipes once per seed and write mean and std (default: the recipe's seed, once)")
    p.add_argument("--out", default="", help="JSON result (default bench/results/beauty.json, with --seeds "
                                             "bench/results/beauty_seeds.json)")
    p.add_argument("--reuse", default="",
                   help="with --seeds: take one seed from a single-seed result of the same recipes and settings "
                        "(e.g. bench/results/beauty.json) instead of rerunning it")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="write the seeds file from single-seed results of one recipe instead of running anything")
    args = p.parse_args()
    if args.merge:
        return merge(args.merge, args.out or "bench/results/beauty_seeds.json")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    code_versions = versions()  # the code that runs, before anything changes
    recipes = [args.config] + ([args.baseline] if args.baseline else [])
    seeds = args.seeds if args.seeds else [None]
    if args.reuse and not args.seeds:
        sys.exit("--reuse takes one seed of a --seeds run from an earlier result; add --seeds")
    reused = reused_row(args.reuse, recipes, args.overrides) if args.reuse else None
    if reused and reused[0] not in seeds:
        sys.exit(f"--reuse {args.reuse}: its seed {reused[0]} is not among --seeds {seeds}")
    runs: list[list[dict]] = []
    for seed in seeds:
        if reused and seed == reused[0]:
            runs.append(reused[1])
            continue
        runs.append([run_recipe(recipe, recipe_overrides(recipe, args.config, args.overrides, seed))
                     for recipe in recipes])
    head = runs[0][0]
    out = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
           "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "machine": machine(), "versions": code_versions,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if args.seeds:
        out["seeds"] = seeds
        out["wall_seconds"] = {r["config_file"]: [row[i]["wall_seconds"] for row in runs] for i, r in enumerate(runs[0])}
        out["metrics"] = summarize([{"metrics": {k: v for r in row for k, v in r["metrics"].items()}} for row in runs])
        out["metrics_with_history"] = summarize([{"metrics": {k: v for r in row for k, v in
                                                              r["metrics_with_history"].items()}} for row in runs])
        out["runs"] = runs
        default = "bench/results/beauty_seeds.json"
    else:
        out.update({"seed": head["seed"], "wall_seconds": head["wall_seconds"],
                    "metrics": {k: v for r in runs[0] for k, v in r["metrics"].items()},
                    "metrics_with_history": {k: v for r in runs[0] for k, v in r["metrics_with_history"].items()},
                    "omitted": {k: v for r in runs[0] for k, v in r["omitted"].items()},
                    "train": head["train"], "config": head["config"]})
        if len(runs[0]) > 1:
            out["baseline"] = {k: runs[0][1][k] for k in ("config_file", "seed", "wall_seconds", "train", "config")}
        default = "bench/results/beauty.json"
    path = Path(args.out or default)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}; peak RSS MB: {out['peak_rss_mb']}")


if __name__ == "__main__":
    main()
