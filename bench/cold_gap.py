"""Where the hybrid loses LIGER's cold users: for each user whose target is a new item (in no training
sequence), what ranks above that target in the hybrid's list (beam search's top K plus every new item,
re-ranked by the dense score).

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000 \
        python bench/cold_gap.py --run runs/bench-beauty [--run ...] [--split valid] [--candidates 20] [--threads N]
                                 [--out bench/results/cold_gap.json]

Per run, over the split's cold users (history kept in the ranking, as LIGER ranks): the hybrid's R@10; how many
of the K in-set candidates and how many other new items score above the target, on average; how often the
target is among the 10 best new items by the dense score and by text likeness alone (the content baseline's
cosine with the last 3 history items); and the hybrid's R@10 if every in-set candidate ranked below every new
item (the most any re-weighting of new against known items could give). A gap between the last figure and the
first is a calibration gap (the dense head scores new items too low beside known ones), not a failure to tell
new items apart. Validation by default: a diagnosis, not a result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from meta import machine, versions

from genrec.config import load_config
from genrec.data.batches import eval_batches
from genrec.models.checkpoint import load_model
from genrec.models.content import recent_text_cosines
from genrec.models.dense import RECENT, dense_log_probs, hybrid_scores
from genrec.rundir import RunDir
from genrec.workspace import load_workspace

COLUMNS = ("cold_users", "hybrid_recall@10", "known_above", "new_above", "dense_top10_of_new",
           "text_top10_of_new", "recall@10_if_new_first")


@torch.no_grad()
def gap(run_dir: str, split: str, candidates: int) -> dict[str, float]:
    if not (Path(run_dir) / "config.yaml").is_file():
        sys.exit(f"--run {run_dir}: no config.yaml there; pass the directory of a finished genrec run")
    cfg = load_config(str(Path(run_dir) / "config.yaml"), [f"run_dir={run_dir}"])
    run = RunDir(cfg.run_dir)
    model = load_model(run.model).eval()
    if getattr(model, "dense", None) is None:
        sys.exit(f"--run {run_dir}: its model has no dense head (model.tiger.dense_weight=0), so it has no hybrid "
                 f"to look inside; pass a run trained with model.tiger.dense_weight > 0")
    ws = load_workspace(cfg, run)
    eval_set = getattr(ws.split, split)
    new = model.dense.new_items
    cold = np.nonzero(new.numpy()[eval_set.targets])[0]
    text = F.normalize(model.text.item_text.float(), dim=-1)
    rows = []
    for _, batch in eval_batches([eval_set.histories[i] for i in cold], eval_set.targets[cold],
                                 np.zeros(len(cold), dtype=np.int64), max_history=model.max_history, batch_size=256):
        hybrid = hybrid_scores(model, batch, candidates, exclude_history=False)
        dense = dense_log_probs(model, batch, exclude_history=False).masked_fill(~new, float("-inf"))
        likeness = recent_text_cosines(text, batch.history[:, -RECENT:]).masked_fill(~new, float("-inf"))
        for r, t in enumerate(batch.targets.tolist()):
            above = hybrid[r] > hybrid[r, t]  # -inf (not a candidate) is never above
            rows.append((int((above & ~new).sum()), int((above & new).sum()), int((dense[r] > dense[r, t]).sum()),
                         int((likeness[r] > likeness[r, t]).sum())))
    a = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return {"cold_users": len(a), "hybrid_recall@10": float(np.mean(a[:, 0] + a[:, 1] < 10)),
            "known_above": float(a[:, 0].mean()), "new_above": float(a[:, 1].mean()),
            "dense_top10_of_new": float(np.mean(a[:, 2] < 10)), "text_top10_of_new": float(np.mean(a[:, 3] < 10)),
            "recall@10_if_new_first": float(np.mean(a[:, 1] < 10))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="a finished run with a dense head (repeatable)")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--candidates", type=int, default=20, help="the hybrid's beam candidates (K)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="bench/results/cold_gap.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    print(f"{'run':<32}" + "".join(f"{c:>24}" for c in COLUMNS))
    for run in args.run:
        results[run] = gap(run, args.split, args.candidates)
        print(f"{run:<32}" + "".join(f"{results[run][c]:>24.4f}" for c in COLUMNS), flush=True)
    out = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "split": args.split,
           "candidates": args.candidates, "machine": machine(), "versions": versions(), "runs": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
