"""Evaluation: leave-one-out (or temporal) next-item prediction over the full catalogue, every user.

Protocol. Each evaluated user has one held-out target item and a history (the items before it, truncated
to the model's `max_history`). The model ranks the *whole catalogue*; no sampled negatives. Metrics are
computed on item IDs after mapping semantic IDs back to items, so two items that share a code prefix are
never confused. Recall@k = share of users whose target is in the top k; NDCG@k = mean of 1/log2(rank + 2)
over users whose target is in the top k (one relevant item, so the ideal DCG is 1).

Two methods:
- "generative": constrained beam search with `beam_size` beams returns `beam_size` items; metrics are
  reported only for k <= beam_size (a larger k would be capped by the beam, and is listed as omitted). The
  evaluator asks the model for each target's rank in that list (`target_ranks`), which a Tiger computes by a
  pruned beam search with the same answer (`decode.beam_ranks`): a user is finished once the target's prefix
  leaves the beam, and beams that cannot end above the target are never expanded.
- "exact": every item's log-probability is computed (work shared along the trie); the ranking is complete,
  so every k is reported. The rank of a target is the number of items scoring strictly higher.

Users are sharded across processes as indices[rank::world] with no padding, and sums of per-user metric
values and user counts are all-reduced, so N processes give the same numbers as one. Validation is for model
selection and early stopping; the test split is only ever reported. With `exclude_history` (the default) the
user's own history items are removed from the ranking: in data without repeat interactions (Amazon reviews:
no user reviews an item twice) they can never be the target, and left in they crowd out real candidates.
When a split's targets do repeat history items the evaluator warns, since those targets become unreachable.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from genrec.batches import eval_batches
from genrec.config import Config
from genrec.decode import score_catalog
from genrec.distributed import DistInfo, all_reduce_sum
from genrec.metrics import metric_sums, ranks_in_scores
from genrec.splits import EvalSet

logger = logging.getLogger(__name__)

MAX_DECODER_ROWS = 65536  # users x beams x decoder layers per batch (bounds the KV cache: ~0.4 GB per layer)


@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)  # "{split}/{method}/{metric}@{k}" -> value
    omitted: dict[str, str] = field(default_factory=dict)  # key -> why it is not reported
    users: int = 0
    seconds: float = 0.0


def resolve_dtype(dtype: str, device_type: str) -> str:
    """"auto" -> "bfloat16" where the hardware computes it natively (else emulation makes it slower), else
    "float32"; other values pass through."""
    if dtype != "auto":
        return dtype
    if device_type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"


@torch.no_grad()
def evaluate_split(
    model: nn.Module, eval_set: EvalSet, user_bucket: np.ndarray, *, split: str, beam_size: int,
    ks: tuple[int, ...], exact: bool = False, batch_size: int = 256, exclude_history: bool = False,
    rank: int = 0, world_size: int = 1, all_reduce: Callable[[Tensor], Tensor] = lambda t: t,
    progress: bool = False, dtype: str = "auto",
) -> EvalResult:
    """Recall/NDCG@k of `model` on one split; every process calls this with its rank.

    The model returns `beam_size` items per user, or max(ks) when it ranks the whole catalogue anyway
    (`complete_ranking`); `exact` adds the complete ranking of a generative model (`score_catalog`)."""
    start = time.perf_counter()
    model.eval()
    ks = tuple(sorted(ks))
    returned = max(ks) if model.complete_ranking else beam_size
    method_ks = {model.method: tuple(k for k in ks if k <= returned)}
    exact = exact and not model.complete_ranking
    if exact:
        method_ks["exact"] = ks
    sums = {method: torch.zeros(2, len(m_ks), dtype=torch.double) for method, m_ks in method_ks.items()}
    count = torch.zeros(1, dtype=torch.double)
    # decoder rows (users x beams) per batch are capped so that wide beams fit in memory
    rows = MAX_DECODER_ROWS // max(1, model.cfg.decoder_layers if model.method == "generative" else 1)
    batch_size = max(1, min(batch_size, rows // returned))
    if exact:
        batch_size = min(batch_size, 8)
    batches = eval_batches(eval_set.histories, eval_set.targets, user_bucket[eval_set.users],
                           max_history=model.max_history, batch_size=batch_size, rank=rank, world_size=world_size)
    if progress:
        from tqdm import tqdm

        total = (len(eval_set.targets[rank::world_size]) + batch_size - 1) // batch_size
        batches = tqdm(batches, total=total, desc=f"evaluate {split}", leave=False)
    device_type = model.item_codes.device.type
    dtype = resolve_dtype(dtype, device_type)
    autocast = (torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext())
    for _, batch in batches:
        if method_ks[model.method]:
            with autocast:
                ranks = model.target_ranks(batch, returned, exclude_history=exclude_history)
            sums[model.method] += metric_sums(ranks, method_ks[model.method])
        if exact:
            with autocast:
                scores = score_catalog(model, batch, model.trie).float()  # [B, N]
            if exclude_history:
                hist = batch.history.clamp(min=0)
                scores.scatter_(1, hist, torch.where(batch.history >= 0, float("-inf"), scores.gather(1, hist)))
            sums["exact"] += metric_sums(ranks_in_scores(scores, batch.targets), ks)
        count += batch.targets.shape[0]
    out = EvalResult()
    n = float(all_reduce(count)[0])
    for method, s in sums.items():
        s = all_reduce(s) / max(n, 1.0)
        for j, k in enumerate(method_ks[method]):
            out.metrics[f"{split}/{method}/recall@{k}"] = float(s[0, j])
            out.metrics[f"{split}/{method}/ndcg@{k}"] = float(s[1, j])
    for k in ks:
        if k > returned:
            reason = (f"beam search returns {beam_size} items (evaluate.beam_size); raise it to >= {k} "
                      f"or set evaluate.exact=true for a complete ranking")
            out.omitted[f"{split}/{model.method}/recall@{k}"] = reason
            out.omitted[f"{split}/{model.method}/ndcg@{k}"] = reason
    out.users, out.seconds = int(n), time.perf_counter() - start
    return out


def repeat_share(eval_set: EvalSet) -> float:
    """Share of users whose held-out item is already in their history (0 in data without repeats)."""
    if len(eval_set) == 0:
        return 0.0
    return float(np.mean([bool(np.isin(t, h).any()) for t, h in zip(eval_set.targets, eval_set.histories)]))


def format_table(metrics: dict[str, float], ks: tuple[int, ...]) -> str:
    """Rows split/method, columns R@k and N@k; '-' where a metric is not reported."""
    rows = sorted({key.rsplit("/", 1)[0] for key in metrics})
    cols = [(m, k) for m in ("recall", "ndcg") for k in sorted(ks)]
    header = f"{'split/method':<20}" + "".join(f"{m[0].upper()}@{k:<6}" for m, k in cols)
    lines = [header, "-" * len(header)]
    for row in rows:
        vals = [metrics.get(f"{row}/{m}@{k}") for m, k in cols]
        lines.append(f"{row:<20}" + "".join(f"{v:<8.4f}" if v is not None else f"{'-':<8}" for v in vals))
    return "\n".join(lines)


def evaluate_run(cfg: Config, run_dir: Path, out_dir: Path, dist: DistInfo, model_dir: Path | None = None
                 ) -> dict[str, Any]:
    """The evaluate stage: the selected model of a run on its validation and test splits -> results.json."""
    from genrec.checkpoint import check_catalog, load_model
    from genrec.workspace import load_workspace

    ws = load_workspace(cfg, run_dir)
    model_dir = model_dir or run_dir / "train" / "best"
    model = load_model(model_dir, map_location=dist.device)
    check_catalog(model_dir, ws.item_codes)
    e = cfg.evaluate
    results: dict[str, Any] = {"metrics": {}, "omitted": {}, "users": {}, "seconds": {},
                               "beam_size": e.beam_size, "exact": e.exact, "exclude_history": e.exclude_history,
                               "dtype": resolve_dtype(e.dtype, torch.device(dist.device).type),
                               "model": str(model_dir), "num_items": len(ws.item_ids)}
    for split in e.splits:
        eval_set = ws.split.valid if split == "valid" else ws.split.test
        repeats = repeat_share(eval_set) if e.exclude_history else 0.0
        if repeats > 0 and dist.is_main:
            logger.warning("%s: %.1f%% of targets are already in the user's history and cannot be hit with "
                           "evaluate.exclude_history=true; set it to false for data with repeat interactions",
                           split, 100 * repeats)
        r = evaluate_split(model, eval_set, ws.user_bucket, split=split,
                           beam_size=e.beam_size, ks=e.ks, exact=e.exact, batch_size=e.batch_size,
                           exclude_history=e.exclude_history, rank=dist.rank, world_size=dist.world_size,
                           all_reduce=all_reduce_sum, progress=dist.is_main and sys.stderr.isatty(), dtype=e.dtype)
        results["metrics"].update(r.metrics)
        results["omitted"].update(r.omitted)
        results["users"][split], results["seconds"][split] = r.users, round(r.seconds, 2)
        logger.info("%s: %d users in %.1f s", split, r.users, r.seconds)
    if dist.is_main:
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results
