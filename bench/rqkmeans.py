"""Residual k-means semantic IDs at catalogue scale: which k-means to use, and 1 million items end to end.

    python bench/rqkmeans.py [--items 1000000] [--pick-items 200000] [--out bench/results/rqkmeans.json]

Part 1 (pick by measurement): one k-means level (k = 256, 384 dimensions, a fixed number of Lloyd iterations,
every point used) on `--pick-items` synthetic embeddings with genrec's torch implementation
(`genrec.rqkmeans.kmeans`), a plain NumPy Lloyd loop (BLAS matmul for the distances, bincount/add.at for the
means) and faiss (`faiss.Kmeans`, subsampling disabled so that it sees every point, as the others do): wall
time, peak resident memory and the mean squared distance reached.

Part 2: `genrec.rqkmeans.fit_rq_kmeans` on `--items` embeddings of 384 dimensions, 3 levels x 256 codes, 50
iterations per level at most (the defaults of `genrec quantize`), plus the collision level: wall time, peak
resident memory, residual error per level and how many IDs collide.

Embeddings: unit vectors around 2,000 random centres (like sentence embeddings: clustered, normalised),
float32. Peak memory is the process high-water mark, reset before each measurement (Linux clear_refs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meta import machine, versions

from genrec.ids.rqkmeans import add_collision_level, fit_rq_kmeans, kmeans


def embeddings(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):  # in blocks, to keep the temporaries small
        hi = min(lo + 100_000, n)
        x[lo:hi] = centres[rng.integers(0, 2000, hi - lo)] + 0.8 * rng.standard_normal((hi - lo, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mse(x: np.ndarray, centroids: np.ndarray) -> float:
    c_sq = (centroids**2).sum(1)
    total = 0.0
    for lo in range(0, len(x), 65536):
        xc = x[lo : lo + 65536]
        total += float(((xc**2).sum(1) + (c_sq[None] - 2 * xc @ centroids.T).min(1)).clip(min=0).sum())
    return total / len(x)


def numpy_kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    """Plain Lloyd iterations in NumPy (random initial points; the reference a practitioner would write)."""
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(len(x), k, replace=False)].copy()
    assign = np.empty(len(x), dtype=np.int64)
    for _ in range(iters):
        c_sq = (centroids**2).sum(1)
        for lo in range(0, len(x), 65536):
            assign[lo : lo + 65536] = (c_sq[None] - 2 * x[lo : lo + 65536] @ centroids.T).argmin(1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=k)
        alive = counts > 0
        centroids[alive] = sums[alive] / counts[alive, None]
    return centroids


def pick(x: np.ndarray, k: int, iters: int, seed: int) -> dict:
    rows = {}

    def run(name: str, fn) -> None:
        reset_peak()
        before = peak_mb()
        start = time.perf_counter()
        centroids = fn()
        seconds = time.perf_counter() - start
        rows[name] = {"seconds": seconds, "peak_rss_mb": round(peak_mb()), "rss_before_mb": round(before),
                      "mse": mse(x, centroids)}
        print(f"  {name:<8} {seconds:7.1f} s  peak RSS {rows[name]['peak_rss_mb']:6d} MB  "
              f"mean squared distance {rows[name]['mse']:.5f}", flush=True)

    def genrec_torch() -> np.ndarray:  # iterations cannot stop early on this data within `iters`
        g = torch.Generator().manual_seed(seed)
        return kmeans(torch.from_numpy(x), k, iters=iters, generator=g)[0].numpy()

    run("torch", genrec_torch)
    run("numpy", lambda: numpy_kmeans(x, k, iters, seed))
    try:
        import faiss

        def faiss_kmeans() -> np.ndarray:
            km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, max_points_per_centroid=len(x) // k + 1,
                              verbose=False)
            km.train(x)
            return km.centroids

        run("faiss", faiss_kmeans)
    except ImportError:
        rows["faiss"] = {"skipped": "faiss is not installed (pip install faiss-cpu)"}
        print("  faiss    skipped: not installed")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--pick-items", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--pick-iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/rqkmeans.json")
    args = p.parse_args()
    if min(args.items, args.pick_items) < 256 or args.dim < 1 or args.pick_iters < 1:
        p.error("--items and --pick-items need at least 256 rows (k = 256), --dim and --pick-iters at least 1")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    host = machine()
    print(f"{host['cpu']}, {host['cores']} cores; torch {torch.__version__}, numpy {np.__version__}")

    print(f"\n== Pick: one k-means level, k=256, {args.pick_iters} iterations, {args.pick_items:,} x {args.dim} ==")
    x = embeddings(args.pick_items, args.dim, args.seed)
    picked = pick(x, 256, args.pick_iters, args.seed)
    del x

    print(f"\n== RQ-KMeans semantic IDs: {args.items:,} x {args.dim}, 3 levels x 256, <= 50 iterations ==")
    x = embeddings(args.items, args.dim, args.seed + 1)
    reset_peak()
    before = peak_mb()
    start = time.perf_counter()
    result = fit_rq_kmeans(torch.from_numpy(x), num_levels=3, codebook_size=256, iters=50, seed=args.seed)
    codes = add_collision_level(result.codes.numpy())
    seconds = time.perf_counter() - start
    full = {"items": args.items, "dim": args.dim, "levels": 3, "codebook_size": 256, "max_iters": 50,
            "seconds": seconds, "peak_rss_mb": round(peak_mb()), "rss_before_mb": round(before),
            "input_mb": round(x.nbytes / 2**20), "residual_mse": result.residual_norms,
            "items_sharing_3_codes": int((codes[:, -1] > 0).sum()), "max_collision_code": int(codes[:, -1].max())}
    print(f"  {seconds:.1f} s, peak RSS {full['peak_rss_mb']} MB (input {full['input_mb']} MB, "
          f"{full['rss_before_mb']} MB before); residual {', '.join(f'{v:.4f}' for v in result.residual_norms)}")

    try:
        import faiss

        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = ""
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
           "machine": host, "versions": {**versions(), "faiss": faiss_version},
           "pick": {"items": args.pick_items, "dim": args.dim, "k": 256, "iters": args.pick_iters, "runs": picked},
           "rq_kmeans": full}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
