"""Residual k-means (RQ-KMeans): item embeddings -> L levels of codes in [0, K). Pure torch; `RQKMeans` is
the quantizer (fit, encode, save, load) the quantize stage uses.

Level l runs k-means on the residuals left by levels 0..l-1; an item's semantic ID is its code per level.
`add_collision_level` appends one more level that numbers items sharing all L codes, so IDs are unique.

Distributed use: every function that fits takes `all_reduce`, a function that sums a tensor over processes
and returns the sum (e.g. a wrapper of `torch.distributed.all_reduce`), and `rank`, this process's index.
Each process passes its own shard of the rows; per-centroid sums and counts, the number of changed
assignments and the k-means++ seed sample are all-reduced, so every process computes identical centroids.
With `all_reduce=None` (one process) the same code runs with an identity reduction.

Initialisation: every process contributes a deterministic sample of its rows (all rows when the shard is
small) to a zero-padded [world, quota, D] buffer that is all-reduced, which is an all-gather; k-means++ then
runs on that identical pool with the shared generator. Empty ("dead") centroids are re-seeded each
iteration with the distinct points farthest from their centroid, gathered the same way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from genrec.files import save_npy

logger = logging.getLogger(__name__)

AllReduce = Callable[[Tensor], Tensor]  # sums a tensor over processes and returns the sum

_CHUNK_ROWS = 8192  # rows per distance block: a [C, K] float32 block (8 MiB for K=256) bounds the memory
_POOL_PER_CENTROID = 64  # k-means++ runs on a sample of at most max(64 K, _POOL_MIN) rows
_POOL_MIN = 4096


def _identity(t: Tensor) -> Tensor:
    return t


def _gather(local: Tensor, rank: int, world: int, all_reduce: AllReduce) -> list[Tensor]:
    """All-gather of [m_r, ...] tensors of varying m_r through a sum of zero-padded [world, m, ...] buffers."""
    counts = torch.zeros(world, dtype=torch.float64, device=local.device)
    counts[rank] = local.shape[0]
    counts = all_reduce(counts).cpu()
    width = int(counts.max().item())
    buf = torch.zeros((world, width, *local.shape[1:]), dtype=local.dtype, device=local.device)
    buf[rank, : local.shape[0]] = local
    buf = all_reduce(buf)
    return [buf[r, : int(counts[r].item())] for r in range(world)]


@torch.no_grad()
def _nearest(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest centroid per row, in blocks of rows: (assignment [N] int64, squared distance [N] float32)."""
    n = x.shape[0]
    c_sq = (centroids * centroids).sum(1)  # [K]
    assign = torch.empty(n, dtype=torch.int64, device=x.device)
    dist = torch.empty(n, dtype=torch.float32, device=x.device)
    for start in range(0, n, _CHUNK_ROWS):
        xc = x[start : start + _CHUNK_ROWS]  # [C, D]
        scores = torch.addmm(c_sq, xc, centroids.T, alpha=-2.0)  # [C, K] = |c|^2 - 2 x.c
        best, idx = scores.min(dim=1)  # [C], first index on ties
        assign[start : start + xc.shape[0]] = idx
        dist[start : start + xc.shape[0]] = (best + (xc * xc).sum(1)).clamp_min_(0.0)
    return assign, dist


@torch.no_grad()
def _sums(x: Tensor, assign: Tensor, k: int) -> Tensor:
    """Per-centroid row sums and counts, [K, D + 1] float64 (float32 partial sums per block of rows)."""
    out = torch.zeros(k, x.shape[1] + 1, dtype=torch.float64, device=x.device)
    part = torch.empty(k, x.shape[1], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        part.zero_().index_add_(0, assign[start : start + _CHUNK_ROWS], x[start : start + _CHUNK_ROWS])
        out[:, :-1] += part
    out[:, -1] = torch.bincount(assign, minlength=k).to(torch.float64)
    return out


def _distinct_rows(rows: Tensor, order: Tensor, limit: int) -> list[int]:
    """The first `limit` entries of `order` whose rows differ from all earlier picks (scanned in blocks)."""
    seen: set[bytes] = set()
    keep: list[int] = []
    block = max(4 * limit, 256)
    for start in range(0, order.shape[0], block):
        idx = order[start : start + block]
        for i, row in zip(idx.tolist(), rows[idx].cpu().numpy()):
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                keep.append(i)
                if len(keep) == limit:
                    return keep
    return keep


def _farthest(x: Tensor, dist: Tensor, count: int, rank: int, world: int, reduce: AllReduce) -> Tensor:
    """Up to `count` distinct rows (over all processes) farthest from their centroid, [M, D]; ties by order."""
    order = torch.sort(dist, descending=True, stable=True).indices  # [N]
    order = order[dist[order] > 0]  # a row sitting on its centroid would only duplicate that centroid
    keep = torch.tensor(_distinct_rows(x, order, count), dtype=torch.int64, device=x.device)
    local = torch.cat([x[keep], dist[keep, None]], dim=1)  # [m, D + 1]
    merged = torch.cat(_gather(local, rank, world, reduce)) if world > 1 else local  # [M, D + 1], rank order
    by_dist = torch.sort(merged[:, -1], descending=True, stable=True).indices
    return merged[_distinct_rows(merged[:, :-1], by_dist, count), :-1]


def _kmeans_pp(pool: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding on a pool of rows (identical on every process), [K, D]."""
    m = pool.shape[0]
    pool_sq = (pool * pool).sum(1).double()  # [M]

    def dist_to(i: int) -> Tensor:  # [M] squared distances to row i, |p|^2 - 2 p.c + |c|^2
        return (pool_sq - 2.0 * (pool @ pool[i]).double() + pool_sq[i]).clamp_min_(0.0)

    chosen = [int(torch.randint(m, (1,), generator=generator).item())]
    d2 = dist_to(chosen[0])  # [M]
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0:
            i = int(torch.multinomial(d2 / total, 1, generator=generator).item())
        else:  # fewer distinct rows than k: a duplicate, re-seeded later as a dead centroid
            i = int(torch.randint(m, (1,), generator=generator).item())
        chosen.append(i)
        d2 = torch.minimum(d2, dist_to(i))
    return pool[chosen].clone()


def _init_pool(x: Tensor, k: int, generator: torch.Generator, rank: int, world: int,
               reduce: AllReduce) -> Tensor:
    """The rows k-means++ sees: up to max(64 K, 4096) rows sampled over all processes, [M, D] on the CPU."""
    quota = math.ceil(max(_POOL_PER_CENTROID * k, _POOL_MIN) / world)
    local_seed = int(torch.randint(2**62, (1,), generator=generator).item())  # same draw on every process
    if x.shape[0] <= quota:
        sample = x
    else:
        local = torch.Generator().manual_seed(local_seed + rank)
        idx = torch.randperm(x.shape[0], generator=local)[:quota].sort().values
        sample = x[idx.to(x.device)]
    return (torch.cat(_gather(sample, rank, world, reduce)) if world > 1 else sample).cpu()


@torch.no_grad()
def kmeans(x: Tensor, k: int, *, iters: int, generator: torch.Generator, all_reduce: AllReduce | None = None,
           rank: int = 0, init: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding: (centroids [K, D] float32, assignment [N] int64).

    x: [N, D], this process's rows. `init` ([K, D]) replaces k-means++ seeding and must be identical on every
    process. Stops early when no assignment changes; the returned assignment is the nearest centroid of the
    returned centroids. Dead centroids are re-seeded from the farthest distinct points each iteration.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects [N, D] rows, got shape {tuple(x.shape)}")
    x = x.float().contiguous()
    reduce = all_reduce or _identity
    world = int(reduce(torch.ones(1, dtype=torch.float64, device=x.device)).item()) if all_reduce else 1
    total = int(reduce(torch.tensor([float(x.shape[0])], dtype=torch.float64, device=x.device)).item())
    if total < k:
        raise ValueError(f"kmeans needs at least k={k} rows, got {total}")

    if init is None:
        centroids = _kmeans_pp(_init_pool(x, k, generator, rank, world, reduce), k, generator).to(x.device)
    else:
        centroids = init.float().clone().to(x.device)  # [K, D]
    assign, dist = _nearest(x, centroids)  # [N], [N]
    done = 0
    for done in range(1, iters + 1):
        stats = reduce(_sums(x, assign, k))  # [K, D + 1]
        counts = stats[:, -1]  # [K]
        alive = counts > 0
        centroids[alive] = (stats[alive, :-1] / counts[alive, None]).float()
        dead = (~alive).nonzero().flatten()
        if dead.numel():
            seeds = _farthest(x, dist, dead.numel(), rank, world, reduce)  # [M <= dead, D]
            centroids[dead[: seeds.shape[0]]] = seeds.to(centroids.device)
            logger.debug("kmeans iteration %d: re-seeded %d of %d dead centroids", done, seeds.shape[0],
                         dead.numel())
        new_assign, dist = _nearest(x, centroids)
        changed = int(reduce((new_assign != assign).sum().double()[None]).item())
        assign = new_assign
        logger.debug("kmeans iteration %d: %d assignments changed", done, changed)
        if changed == 0:
            break
    used = int((reduce(torch.bincount(assign, minlength=k).double()) > 0).sum())
    logger.debug("kmeans: %d rows, k=%d, %d iterations, %d centroids used", total, k, done, used)
    if used < k:
        logger.warning("kmeans: only %d of %d centroids have points (too few distinct rows)", used, k)
    return centroids, assign


@dataclass(frozen=True)
class RQResult:
    """What fit_rq_kmeans learned: this process's codes, the codebooks and the residual error per level."""

    codes: Tensor  # [N, L] int64, this process's rows
    centroids: list[Tensor]  # L x [K, D] float32
    residual_norms: list[float]  # mean squared residual before level 0 and after each level (L + 1 values)


def _subtract(residual: Tensor, centroids: Tensor, codes: Tensor) -> None:
    """residual -= centroids[codes], in place and in blocks of rows."""
    for start in range(0, residual.shape[0], _CHUNK_ROWS):
        residual[start : start + _CHUNK_ROWS] -= centroids[codes[start : start + _CHUNK_ROWS]]


def _mean_square(residual: Tensor, reduce: AllReduce) -> float:
    """Mean over all processes' rows of the squared norm of residual [N, D]."""
    total = torch.zeros(2, dtype=torch.float64, device=residual.device)
    for start in range(0, residual.shape[0], _CHUNK_ROWS):
        rows = residual[start : start + _CHUNK_ROWS]  # [C, D]
        total[0] += (rows * rows).sum(1).double().sum()  # float32 row norms, float64 total
    total[1] = residual.shape[0]
    total = reduce(total)
    return float(total[0] / total[1])


@torch.no_grad()
def fit_rq_kmeans(x: Tensor, *, num_levels: int, codebook_size: int, iters: int, seed: int,
                  all_reduce: AllReduce | None = None, rank: int = 0) -> RQResult:
    """Fit `num_levels` k-means codebooks of `codebook_size` codes on successive residuals of x [N, D].

    Same seed (and the same shards) -> identical codes and centroids. With `all_reduce`, x is this process's
    shard (e.g. `rows[rank::world]`), `rank` its index, and every process gets the same centroids.
    """
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a [N, D] matrix, got shape {tuple(x.shape)}")
    reduce = all_reduce or _identity
    total = int(reduce(torch.tensor([float(x.shape[0])], dtype=torch.float64, device=x.device)).item())
    if total < codebook_size:
        raise ValueError(f"{total} rows cannot fill a codebook of {codebook_size} codes")
    generator = torch.Generator().manual_seed(seed)
    residual = x.detach().float().clone().contiguous()  # [N, D]
    codes = torch.empty(x.shape[0], num_levels, dtype=torch.int64, device=x.device)  # [N, L]
    norms = [_mean_square(residual, reduce)]
    codebooks: list[Tensor] = []
    for level in range(num_levels):
        centroids, assign = kmeans(residual, codebook_size, iters=iters, generator=generator,
                                   all_reduce=all_reduce, rank=rank)
        codes[:, level] = assign
        _subtract(residual, centroids, assign)
        codebooks.append(centroids)
        norms.append(_mean_square(residual, reduce))
        logger.info("rq-kmeans level %d: mean squared residual %.5f -> %.5f", level, norms[-2], norms[-1])
    return RQResult(codes=codes, centroids=codebooks, residual_norms=norms)


@torch.no_grad()
def encode(x: Tensor, centroids: list[Tensor]) -> Tensor:
    """Codes [N, L] for rows x [N, D] with fitted centroids (greedy: nearest code, then its residual)."""
    residual = x.detach().float().clone().contiguous()  # [N, D]
    codes = torch.empty(x.shape[0], len(centroids), dtype=torch.int64, device=x.device)  # [N, L]
    for level, c in enumerate(centroids):
        c = c.float().to(x.device)  # [K, D]
        codes[:, level], _ = _nearest(residual, c)
        _subtract(residual, c, codes[:, level])
    return codes


def add_collision_level(codes: np.ndarray) -> np.ndarray:
    """[N, L] -> [N, L + 1]: items sharing all L codes get 0, 1, 2, ... in item order; unique items get 0."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [N, L], got shape {codes.shape}")
    n = codes.shape[0]
    suffix = np.zeros(n, dtype=np.int64)
    if n:
        _, group = np.unique(codes, axis=0, return_inverse=True)
        group = group.reshape(-1)  # [N]
        order = np.argsort(group, kind="stable")  # grouped, item order inside a group
        sorted_group = group[order]
        is_start = np.r_[True, sorted_group[1:] != sorted_group[:-1]]
        start_pos = np.maximum.accumulate(np.where(is_start, np.arange(n), 0))
        suffix[order] = np.arange(n) - start_pos
    return np.concatenate([codes, suffix[:, None]], axis=1)


def codebook_health(codes: np.ndarray, codebook_size: int) -> dict:
    """Per-level code usage and perplexity, and how unique the L-code IDs are (JSON-able)."""
    codes = np.asarray(codes, dtype=np.int64)
    n, num_levels = codes.shape
    levels = []
    for level in range(num_levels):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        p = counts[counts > 0] / max(n, 1)
        used = int((counts > 0).sum())
        levels.append({"level": level, "used_codes": used, "usage": used / codebook_size,
                       "perplexity": float(np.exp(-(p * np.log(p)).sum()))})
    if n:
        _, group, sizes = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
        group = group.reshape(-1)
    else:
        group, sizes = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return {
        "levels": levels,
        "num_items": int(n),
        "num_ids": int(sizes.shape[0]),  # distinct L-code IDs
        "unique_fraction": float((sizes[group] == 1).mean()) if n else 1.0,  # items no other item shares an ID with
        "collision_groups": int((sizes > 1).sum()),
        "largest_group": int(sizes.max()) if n else 0,
    }


class RQKMeans:
    """The residual k-means quantizer: `fit` learns L codebooks of K centroids (returning the rows' codes),
    `encode` gives codes to any rows (items not seen at fit time too), `save`/`load` keep the codebooks as
    `centroids_<level>.npy` (float32 [K, D])."""

    def __init__(self, *, num_levels: int, codebook_size: int, iters: int = 50, seed: int = 0) -> None:
        self.num_levels, self.codebook_size, self.iters, self.seed = num_levels, codebook_size, iters, seed
        self.centroids: list[Tensor] = []
        self.stats: dict = {}

    def fit(self, x: np.ndarray, collab: np.ndarray | None = None) -> np.ndarray:
        """x [N, D] -> codes [N, L]; also sets `centroids` and `stats` (the residual error per level). k-means has
        no collaborative term: `collab` is not used."""
        result = fit_rq_kmeans(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                               num_levels=self.num_levels, codebook_size=self.codebook_size, iters=self.iters,
                               seed=self.seed)
        self.centroids = result.centroids
        self.stats = {"residual_mse": result.residual_norms}  # before level 0, then after each level
        return result.codes.numpy()

    def encode(self, x: np.ndarray) -> np.ndarray:
        """x [M, D] -> codes [M, L] with the fitted codebooks."""
        if not self.centroids:
            raise ValueError("RQKMeans.encode before fit or load")
        return encode(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), self.centroids).numpy()

    def save(self, directory: Path) -> None:
        for level, centroids in enumerate(self.centroids):
            save_npy(Path(directory) / f"centroids_{level}.npy", centroids.cpu().numpy().astype(np.float32))

    @classmethod
    def load(cls, directory: Path, *, num_levels: int, codebook_size: int) -> RQKMeans:
        q = cls(num_levels=num_levels, codebook_size=codebook_size)
        q.centroids = [torch.from_numpy(np.load(Path(directory) / f"centroids_{level}.npy"))
                       for level in range(num_levels)]
        return q
