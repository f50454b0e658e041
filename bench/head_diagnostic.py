"""Where a TIGER model loses to the collab SASRec: likelihood, head of the ranking, and per-level code choice.

    python bench/head_diagnostic.py --run-dir runs/bench-beauty [--model runs/bench-beauty/train/best] [--users 2048]

On a random sample of validation users (seed 0), history items removed from both rankings:
- exact scores of the whole catalogue for TIGER (`score_catalog`, bf16 autocast) and the collab SASRec: R@1, R@10,
  N@10, R@100, the mean log-probability of the target and of the top item, the entropy, the median target rank;
- per level, given the true prefix: TIGER's cross-entropy and top-1 accuracy of the true code against the
  teacher's distribution summed to codes (`Tiger.code_distributions`);
- the teacher-forced loss per level on 4,096 training windows and on the sampled validation targets.
Prints the figures; a diagnostic, not a timing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genrec.config import load_config
from genrec.data.batches import TrainWindows, eval_batches
from genrec.models.checkpoint import load_model
from genrec.rundir import RunDir
from genrec.search import drop_items, score_catalog
from genrec.workspace import load_workspace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/bench-beauty")
    p.add_argument("--model", default=None, help="TIGER model directory (default RUN_DIR/train/best)")
    p.add_argument("--users", type=int, default=2048)
    args = p.parse_args()
    run = RunDir(args.run_dir)
    cfg = load_config(run.config)
    ws = load_workspace(cfg, run)
    model = load_model(Path(args.model) if args.model else run.model).eval()
    teacher = load_model(run.collab_model).eval()
    v = ws.split.valid
    sel = np.random.default_rng(0).permutation(len(v))[: args.users]
    batches = list(eval_batches([v.histories[i] for i in sel], v.targets[sel], ws.user_bucket[v.users[sel]],
                                max_history=cfg.data.max_history, batch_size=64))
    stats = {name: {"rank": [], "target": [], "top": [], "entropy": []} for name in ("tiger", "sasrec")}
    C = model.num_levels
    ce = np.zeros((2, C))
    top1 = np.zeros((2, C))
    valid_loss = 0.0
    with torch.no_grad():
        for _, b in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                s = drop_items(score_catalog(model.code_decoder(), b, model.trie).float(), b.history)
            s = s - torch.logsumexp(s, 1, keepdim=True)
            t = teacher.next_item_probs(b)
            for name, logp in (("tiger", s), ("sasrec", t.clamp(min=1e-38).log())):
                own = logp.gather(1, b.targets[:, None])
                stats[name]["rank"].append((logp > own).sum(1))
                stats[name]["target"].append(own[:, 0])
                stats[name]["top"].append(logp.max(1).values)
                stats[name]["entropy"].append(-(logp.exp() * logp).nan_to_num().sum(1))
            out = model(b)
            valid_loss += float(out.loss) * len(b.targets)
            paths = model.trie.paths(b.targets)
            soft = model.code_distributions(t, b.targets)
            codes = model.item_codes[b.targets]
            for level in range(C):
                mask = model.trie.child_mask(level, paths[:, level], model.level_sizes[level])
                lp = F.log_softmax(out.logits[level].float().masked_fill(~mask, float("-inf")), -1)
                true = codes[:, level : level + 1]
                ce[0, level] -= lp.gather(1, true).sum().item()
                ce[1, level] -= soft[level].gather(1, true).clamp(min=1e-12).log().sum().item()
                top1[0, level] += (lp.argmax(1) == true[:, 0]).sum().item()
                top1[1, level] += (soft[level].argmax(1) == true[:, 0]).sum().item()
        windows = TrainWindows(ws.split.train, ws.user_bucket, cfg.data.max_history)
        idx = np.random.default_rng(0).permutation(len(windows))[:4096]
        train_loss = n_train = 0
        for i in range(0, len(idx), 256):
            k = windows.num_targets(idx[i : i + 256])
            train_loss += float(model(windows.batch(idx[i : i + 256])).loss) * k
            n_train += k
    n = len(sel)
    print(f"{'model':>7} {'R@1':>7} {'R@10':>7} {'N@10':>7} {'R@100':>7} {'logp(target)':>13} {'logp(top)':>10} "
          f"{'entropy':>8} {'median rank':>12}")
    for name, st in stats.items():
        r = torch.cat(st["rank"]).numpy()
        ndcg = np.where(r < 10, 1 / np.log2(r + 2), 0).mean()
        print(f"{name:>7} {(r < 1).mean():7.4f} {(r < 10).mean():7.4f} {ndcg:7.4f} {(r < 100).mean():7.4f} "
              f"{torch.cat(st['target']).mean():13.3f} {torch.cat(st['top']).mean():10.3f} "
              f"{torch.cat(st['entropy']).mean():8.3f} {np.median(r):12.1f}")
    print("level  CE tiger  CE teacher  top-1 tiger  top-1 teacher   (code given the true prefix)")
    for level in range(C):
        print(f"{level:>5} {ce[0, level] / n:9.3f} {ce[1, level] / n:11.3f} {top1[0, level] / n:12.3f} "
              f"{top1[1, level] / n:14.3f}")
    print(f"teacher-forced loss per level: training windows {train_loss / n_train:.3f}, validation {valid_loss / n:.3f}")


if __name__ == "__main__":
    main()
