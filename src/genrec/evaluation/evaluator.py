"""Evaluation: leave-one-out (or temporal) next-item prediction over the full catalogue, every user.

Protocol. Each evaluated user has one held-out target item and a history (the items before it, truncated
to the model's `max_history`). The model ranks the *whole catalogue*; no sampled negatives. Metrics are
computed on item IDs after mapping semantic IDs back to items, so two items that share a code prefix are
never confused. Recall@k = share of users whose target is in the top k; NDCG@k = mean of 1/log2(rank + 2)
over users whose target is in the top k (one relevant item, so the ideal DCG is 1).

Each model offers ranking methods (`RankingMethod`); `evaluate.methods` picks which are evaluated (default:
the model's `default_methods`: its first method unless it says, and for the hybrid `hybrid`, `generative` and
`dense`). A method whose ranking is complete (every item scored, e.g. `exact`, `sasrec`) reports every k. A
top-list method (`generative`: constrained beam search with `beam_size` beams) reports only k <= beam_size (a
larger k would be capped by the beam, and is listed as omitted). The evaluator asks each method for the rank
of every target in its list (`target_ranks`), which for beam search is a pruned search with the same answer
(`genrec.search.beam_ranks`).

Users are sharded across processes as indices[rank::world] with no padding, and sums of per-user metric
values and user counts are all-reduced, so N processes give the same numbers as one. Validation is for model
selection and early stopping; the test split is only ever reported. With `exclude_history` (the default) the
user's own history items are removed from the ranking: in data without repeat interactions (Amazon reviews:
no user reviews an item twice) they can never be the target, and left in they crowd out real candidates.
When a split's targets do repeat history items the evaluator warns, since those targets become unreachable.
The evaluate stage also reports every metric with history items kept in the ranking (`evaluate.with_history`,
results key `metrics_with_history`): the protocol of most published numbers, to be compared only with those.
With `evaluate.rankings_k` it writes each user's top list per split, method and protocol (`rankings.jsonl`).

Cold-start slices (LIGER's definition): an item is a training item when it occurs anywhere in the training part
of a sequence; a user is cold when their target is not a training item, in-set otherwise. Every metric is also
reported per slice, `{split}/{method}/in/{metric}@{k}` and `{split}/{method}/cold/{metric}@{k}`; the key without
a slice is all users. (LIGER truncates training sequences to the history length, which makes more items
count as cold; genrec trains on every position of a sequence, so an item the model trained on is never cold.)
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from genrec import precision
from genrec.config import Config, EvaluateConfig
from genrec.data.batches import eval_batches
from genrec.data.prepare import load_prepared
from genrec.data.cold import training_items
from genrec.data.splits import EvalSet
from genrec.distributed import DistInfo, all_reduce_sum, gather_objects
from genrec.errors import GenrecError
from genrec.evaluation.metrics import metric_sums
from genrec.files import save_json, write_bytes
from genrec.models.checkpoint import check_catalog, load_model
from genrec.models.types import RankingMethod, RetrievalModel, offers
from genrec.plots import RECALL_AT_K, recall_at_k
from genrec.rundir import RANKINGS, RESULTS, RunDir
from genrec.workspace import Workspace, load_workspace

logger = logging.getLogger(__name__)

MAX_DECODER_ROWS = 65536  # users x beams x decoder layers per batch (bounds the KV cache: ~0.4 GB per layer)


@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)  # "{split}/{method}[/{slice}]/{metric}@{k}" -> value
    omitted: dict[str, str] = field(default_factory=dict)  # key -> why it is not reported
    users: int = 0
    cold_users: int = 0  # users whose target is not a training item (0 without a `cold` mask)
    seconds: float = 0.0
    rankings: list[Ranking] = field(default_factory=list)  # with rankings_k: this process's users' top lists


@dataclass(frozen=True)
class Ranking:
    """One user's top list by one method: internal indices (user into the dataset, items into the catalogue)."""

    method: str
    user: int
    target: int
    items: list[int]  # best first; fewer than rankings_k where the method returned fewer
    scores: list[float]


def methods_of(model: RetrievalModel, names: tuple[str, ...]) -> list[RankingMethod]:
    """The model's ranking methods named by `names` (empty: its default), or a GenrecError naming the ones it has."""
    names = names or tuple(getattr(model, "default_methods", model.methods[:1]))
    unknown = [n for n in names if not offers(tuple(model.methods), n)]
    if unknown:
        raise GenrecError(f"evaluate.methods names {', '.join(unknown)}, which a {type(model).__name__} does not "
                          f"offer; choose from {', '.join(model.methods)}")
    return [model.ranking(n) for n in names]


@torch.no_grad()
def evaluate_split(
    model: RetrievalModel, eval_set: EvalSet, user_bucket: np.ndarray, *, split: str, beam_size: int,
    ks: tuple[int, ...], methods: tuple[str, ...] = (), batch_size: int = 256, exclude_history: bool = False,
    rank: int = 0, world_size: int = 1, all_reduce: Callable[[Tensor], Tensor] = lambda t: t,
    progress: bool = False, dtype: str = "auto", rankings_k: int = 0, cold: np.ndarray | None = None,
) -> EvalResult:
    """Recall/NDCG@k of `model`'s ranking `methods` on one split; every process calls this with its rank.

    A top-list method returns `beam_size` items per user, a complete one max(ks). With `rankings_k`, each
    method's top rankings_k list of every user of this process is kept too (`EvalResult.rankings`). With `cold`
    ([N] bool over the catalogue: not a training item), every metric is also reported for the users whose target
    is cold and for the others ("cold" and "in" slices)."""
    start = time.perf_counter()
    model.eval()
    ks = tuple(sorted(ks))
    rankings = methods_of(model, methods)
    returned = {m.name: max(ks) if m.complete else min(beam_size, m.list_size or beam_size) for m in rankings}
    lists = {m.name: m.list_size for m in rankings}
    method_ks = {m.name: tuple(k for k in ks if k <= returned[m.name]) for m in rankings}
    slices = ("all", "in", "cold") if cold is not None else ("all",)
    sums = {(name, s): torch.zeros(2, len(m_ks), dtype=torch.double) for name, m_ks in method_ks.items()
            for s in slices}
    count = torch.zeros(len(slices), dtype=torch.double)
    for m in rankings:  # decoder rows (users x returned items) per batch are capped so that wide beams fit
        batch_size = max(1, min(batch_size, MAX_DECODER_ROWS // max(1, m.cost_per_item) // returned[m.name]))
        if m.max_batch:
            batch_size = min(batch_size, m.max_batch)
    batches = eval_batches(eval_set.histories, eval_set.targets, user_bucket[eval_set.users],
                           max_history=model.max_history, batch_size=batch_size, rank=rank, world_size=world_size)
    if progress:
        from tqdm import tqdm

        total = (len(eval_set.targets[rank::world_size]) + batch_size - 1) // batch_size
        batches = tqdm(batches, total=total, desc=f"evaluate {split}", leave=False)
    device_type = next(itertools.chain(model.parameters(), model.buffers())).device.type
    autocast = precision.autocast(dtype, device_type)
    out = EvalResult()
    for idx, batch in batches:
        slice_rows = {"all": torch.ones(len(idx), dtype=torch.bool)}
        if cold is not None:
            is_cold = torch.from_numpy(cold[eval_set.targets[idx]])
            slice_rows.update({"in": ~is_cold, "cold": is_cold})
        count += torch.tensor([float(slice_rows[s].sum()) for s in slices], dtype=torch.double)
        for m in rankings:
            if method_ks[m.name]:
                with autocast:
                    ranks = m.target_ranks(batch, returned[m.name], exclude_history)
                for s, rows in slice_rows.items():
                    sums[m.name, s] += metric_sums(ranks[rows.to(ranks.device)], method_ks[m.name])
            if rankings_k:
                with autocast:
                    items, scores = m.recommend(batch, rankings_k, exclude_history)
                out.rankings += top_lists(m.name, eval_set.users[idx], eval_set.targets[idx], items, scores)
    counts = dict(zip(slices, all_reduce(count).tolist()))
    n = counts["all"]
    for (name, part), total in sums.items():
        total = all_reduce(total) / max(counts[part], 1.0)
        head = f"{split}/{name}" if part == "all" else f"{split}/{name}/{part}"
        for j, k in enumerate(method_ks[name]):
            if counts[part] == 0:  # a slice without users has no metrics (cold_users says so)
                continue
            out.metrics[f"{head}/recall@{k}"] = float(total[0, j])
            out.metrics[f"{head}/ndcg@{k}"] = float(total[1, j])
    for name, part in sums:
        if counts[part] == 0:
            continue
        head = f"{split}/{name}" if part == "all" else f"{split}/{name}/{part}"
        for k in ks:
            if k > returned[name]:
                reason = (f"beam search returns {beam_size} items (evaluate.beam_size); raise it to >= {k} "
                          f"or add a method with a complete ranking to evaluate.methods")
                if returned[name] < beam_size:
                    reason = (f"{name} returns at most {lists[name]} items (its candidates and the new items); "
                              f"report k <= {lists[name]}")
                out.omitted[f"{head}/recall@{k}"] = reason
                out.omitted[f"{head}/ndcg@{k}"] = reason
    out.users, out.cold_users, out.seconds = int(n), int(counts.get("cold", 0)), time.perf_counter() - start
    return out


def top_lists(method: str, users: np.ndarray, targets: np.ndarray, items: Tensor, scores: Tensor) -> list[Ranking]:
    """items/scores [B, k] (-1 past the end of a list) -> one Ranking per user."""
    out = []
    for user, target, row, row_scores in zip(users.tolist(), targets.tolist(), items.tolist(), scores.float().tolist()):
        n = next((j for j, item in enumerate(row) if item < 0), len(row))
        out.append(Ranking(method, user, target, row[:n], row_scores[:n]))
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
    header = f"{'split/method[/slice]':<24}" + "".join(f"{m[0].upper()}@{k:<6}" for m, k in cols)
    lines = [header, "-" * len(header)]
    for row in rows:
        vals = [metrics.get(f"{row}/{m}@{k}") for m, k in cols]
        lines.append(f"{row:<24}" + "".join(f"{v:<8.4f}" if v is not None else f"{'-':<8}" for v in vals))
    return "\n".join(lines)


def format_results(results: dict[str, Any], ks: tuple[int, ...]) -> str:
    """The metrics table of a results.json under each protocol it holds, then what was left out and why."""
    removed = results.get("exclude_history", True)
    parts = [("history items removed from the ranking" if removed else "history items kept in the ranking",
              results["metrics"])]
    if results.get("metrics_with_history"):
        parts.append(("history items kept in the ranking (the protocol of most published numbers)",
                      results["metrics_with_history"]))
    lines = []
    for title, metrics in parts:
        lines += [title, format_table(metrics, ks), ""]
    seen = set()
    for key, reason in results.get("omitted", {}).items():
        head, k = key.rsplit("/", 1)[0], key.rsplit("@", 1)[1]
        if (head, k) not in seen:
            seen.add((head, k))
            lines.append(f"not reported: {head} @{k}: {reason}")
    return "\n".join(lines).rstrip()


def evaluate_workspace(model: RetrievalModel, ws: Workspace, e: EvaluateConfig, dist: DistInfo, *, split: str,
                       beam_size: int, ks: tuple[int, ...], methods: tuple[str, ...] = (),
                       exclude_history: bool | None = None, rankings_k: int = 0,
                       progress: bool = False, cold_slices: bool = False) -> EvalResult:
    """`evaluate_split` on a run's split with the settings of the `evaluate` section (`exclude_history`: None
    takes the section's), sharded over processes; with `cold_slices`, per in-set and cold users as well."""
    cold = ~training_items(ws.split.train, ws.catalog.num_items) if cold_slices else None
    return evaluate_split(model, ws.split.valid if split == "valid" else ws.split.test, ws.user_bucket, split=split,
                          beam_size=beam_size, ks=ks, methods=methods, batch_size=e.batch_size,
                          exclude_history=e.exclude_history if exclude_history is None else exclude_history,
                          rank=dist.rank, world_size=dist.world_size, all_reduce=all_reduce_sum,
                          progress=progress and dist.is_main and sys.stderr.isatty(), dtype=e.dtype,
                          rankings_k=rankings_k, cold=cold)


def protocols(e: EvaluateConfig) -> list[tuple[str, bool]]:
    """(results key, exclude_history) of each protocol the evaluate section asks for."""
    return [("metrics", e.exclude_history)] + ([("metrics_with_history", False)]
                                               if e.exclude_history and e.with_history else [])


def evaluate_run(cfg: Config, run: RunDir, out_dir: Path, dist: DistInfo, model_dir: Path | None = None
                 ) -> dict[str, Any]:
    """The evaluate stage: the selected model of a run on its validation and test splits, under each protocol
    -> results.json (and rankings.jsonl with `evaluate.rankings_k`)."""
    model_dir = model_dir or run.model
    model = load_model(model_dir, map_location=dist.device)
    ws = load_workspace(cfg, run, with_sids=model.uses_sids)
    check_catalog(model_dir, ws.catalog)
    e = cfg.evaluate
    results: dict[str, Any] = {"metrics": {}, "omitted": {}, "users": {}, "seconds": {},
                               "beam_size": e.beam_size, "methods": [m.name for m in methods_of(model, e.methods)],
                               "exclude_history": e.exclude_history,
                               "dtype": precision.resolve_dtype(e.dtype, torch.device(dist.device).type),
                               "model": str(model_dir), "num_items": ws.catalog.num_items}
    rows: list[dict[str, Any]] = []
    for split in e.splits:
        eval_set = ws.split.valid if split == "valid" else ws.split.test
        repeats = repeat_share(eval_set) if e.exclude_history else 0.0
        if repeats > 0 and dist.is_main:
            logger.warning("%s: %.1f%% of targets are already in the user's history and cannot be hit with "
                           "evaluate.exclude_history=true; set it to false for data with repeat interactions",
                           split, 100 * repeats)
        for key, exclude in protocols(e):
            r = evaluate_workspace(model, ws, e, dist, split=split, beam_size=e.beam_size, ks=e.ks,
                                   methods=e.methods, exclude_history=exclude, rankings_k=e.rankings_k,
                                   progress=True, cold_slices=True)
            results.setdefault(key, {}).update(r.metrics)
            results["omitted"].update(r.omitted)
            results["users"][split] = r.users
            results.setdefault("cold_users", {})[split] = r.cold_users
            results["seconds"][split] = round(results["seconds"].get(split, 0.0) + r.seconds, 2)
            logger.info("%s (history %s): %d users (%d cold) in %.1f s", split, "removed" if exclude else "kept",
                        r.users, r.cold_users, r.seconds)
            if e.rankings_k:
                rows += ranking_rows(gather_objects(r.rankings), ws.catalog.item_ids, split, exclude)
    if dist.is_main:
        if e.rankings_k:
            user_ids = load_prepared(run.prepared).user_ids
            lines = (json.dumps({**row, "user": user_ids[row["user"]]}) for row in rows)
            write_bytes(out_dir / RANKINGS, "".join(line + "\n" for line in lines).encode())
        save_json(out_dir / RESULTS, results)
        recall_at_k(results, out_dir / RECALL_AT_K)
    return results


def ranking_rows(parts: list[Any], item_ids: list[str], split: str, exclude_history: bool) -> list[dict[str, Any]]:
    """Every process's top lists of one split and protocol as rows with external item IDs, by method and user."""
    rankings = sorted((r for part in parts for r in part), key=lambda r: (r.method, r.user))
    return [{"split": split, "method": r.method, "exclude_history": exclude_history, "user": r.user,
             "target": item_ids[r.target], "items": [item_ids[i] for i in r.items],
             "scores": [round(s, 6) for s in r.scores]} for r in rankings]
