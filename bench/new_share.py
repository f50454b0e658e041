"""The new items' share of the dense ranking (methods `newshare-S` and `newtext-S`), chosen on validation, on a
finished run of the new-item protocol (`bench/cold.py`).

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000 \
        python bench/new_share.py [--run runs/bench-cold] [--shares 1 2 3 5 8 12 20] [--threads N]
                                  [--families newshare newtext] [--out bench/results/new_share.json]

The dense head never saw a new item as a target, so nothing in training tells it how often one comes next.
`newshare-S` puts S% of the probability on the new items (spread among them as the head spreads it) and the rest
on the known items; `newtext-S` spreads the new items' S by their text's likeness to the last 3 history items'
(as the content baseline ranks) instead of the head's scores. Each method and S is evaluated on the validation
users (all, in-set and cold slices, history removed); two choices are then evaluated on test under both
protocols, beside the plain dense ranking: the method with the best validation NDCG@10 over all users (or the
plain dense ranking, if it is better), and the method with the best validation NDCG@10 over all users among those
whose cold users get at least the content baseline's validation R@10 and NDCG@10 (new items served at least as
well as text similarity serves them). JSON: "valid" (one row per method), "chosen", "content_valid_cold",
"chosen_serving_cold", "test" (metrics of those methods and of the content baseline, with "with_history/..." for
history kept), "command", "machine", "versions".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from cold import PROTOCOL
from meta import machine, versions

from genrec.config import load_config
from genrec.distributed import DistInfo
from genrec.evaluation.evaluator import evaluate_workspace
from genrec.models.checkpoint import load_model
from genrec.models.content import ContentBaseline
from genrec.rundir import RunDir
from genrec.workspace import load_workspace

KEYS = [f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", default="configs/beauty.yaml", help="the recipe bench/cold.py ran")
    p.add_argument("--run", default="runs/bench-cold", help="the finished new-item run")
    p.add_argument("--shares", type=int, nargs="+", default=[1, 2, 3, 5, 8, 10, 12, 15, 20],
                   help="percentages to try")
    p.add_argument("--families", nargs="+", default=["newshare", "newtext"], choices=("newshare", "newtext"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="bench/results/new_share.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [*PROTOCOL, f"run_dir={args.run}"])
    run = RunDir(cfg.run_dir)
    model = load_model(run.model)
    ws = load_workspace(cfg, run, with_sids=True)
    e = cfg.evaluate
    new = int(model.dense.new_items.sum())
    print(f"{run.root}: {new} new items of {ws.catalog.num_items}")

    def evaluate(split: str, methods: tuple[str, ...], exclude: bool) -> dict[str, float]:
        r = evaluate_workspace(model, ws, e, DistInfo(), split=split, beam_size=e.beam_size, ks=(10, 20),
                               methods=methods, exclude_history=exclude, cold_slices=True)
        return r.metrics

    start = time.perf_counter()
    valid = []
    print(f"{'method':<14}" + "".join(f"{s + '/' + k:>20}" for s in ("all", "in", "cold") for k in KEYS[::2]))
    for name in ("dense", *(f"{f}-{s}" for f in args.families for s in args.shares)):
        m = evaluate("valid", (name,), True)
        row = {"method": name, "share": None if name == "dense" else int(name.split("-")[1]) / 100,
               **{f"{part}/{k}": m[f"valid/{name}{'' if part == 'all' else '/' + part}/{k}"]
                  for part in ("all", "in", "cold") for k in KEYS}}
        valid.append(row)
        print(f"{name:<14}" + "".join(f"{row[s + '/' + k]:>20.4f}" for s in ("all", "in", "cold") for k in KEYS[::2]),
              flush=True)
    chosen = max(valid, key=lambda r: r["all/ndcg@10"])["method"]  # the plain dense ranking may win
    content = ContentBaseline(torch.from_numpy(ws.catalog.text), max_history=cfg.data.max_history)
    r = evaluate_workspace(content, ws, e, DistInfo(), split="valid", beam_size=e.beam_size, ks=(10, 20),
                           methods=("content",), exclude_history=True, cold_slices=True).metrics
    floor = {k: r[f"valid/content/cold/{k}"] for k in ("recall@10", "ndcg@10")}
    print(f"{'content':<14}" + "".join(f"{r[f'valid/content{s}/{k}']:>20.4f}" for s in ("", "/in", "/cold")
                                       for k in KEYS[::2]))
    serving = [row for row in valid if all(row[f"cold/{k}"] >= v for k, v in floor.items())]
    # the best overall among the shares that serve cold users at least as well as text similarity does
    served = max(serving, key=lambda r: r["all/ndcg@10"])["method"] if serving else None
    names = tuple(dict.fromkeys(n for n in ("dense", chosen, served) if n))
    test = {}
    for exclude, prefix in ((True, ""), (False, "with_history/")):
        m = evaluate("test", names, exclude)
        test.update({prefix + k: v for k, v in m.items()})
        m = evaluate_workspace(content, ws, e, DistInfo(), split="test", beam_size=e.beam_size, ks=(10, 20),
                               methods=("content",), exclude_history=exclude, cold_slices=True).metrics
        test.update({prefix + k: v for k, v in m.items()})
    print(f"chosen on validation: {chosen} (best NDCG@10 over all users), {served} (best with cold users served at "
          f"least as well as by the content baseline); test (history removed):")
    for name in (*names, "content"):
        parts = []
        for part in ("all", "in", "cold"):
            head = f"test/{name}" + ("" if part == "all" else f"/{part}")
            parts.append(f"{part} R@10 {test[head + '/recall@10']:.4f} N@10 {test[head + '/ndcg@10']:.4f}")
        print(f"  {name:<14}" + "  ".join(parts))
    out = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
           "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "machine": machine(), "versions": versions(),
           "run": str(run.root), "new_items": new, "num_items": ws.catalog.num_items, "valid": valid,
           "chosen": chosen, "content_valid_cold": floor, "chosen_serving_cold": served, "test": test, "seconds": round(time.perf_counter() - start, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
