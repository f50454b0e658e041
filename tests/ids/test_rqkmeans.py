"""RQ-KMeans: k-means correctness, determinism, dead centroids, the injected all-reduce, collision level, health."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import genrec.ids.rqkmeans as rq
from genrec.ids.rqkmeans import RQKMeans, add_collision_level, codebook_health, encode, fit_rq_kmeans, kmeans


def clustered(n: int = 600, d: int = 8, clusters: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, d, generator=g) * 3  # [C, D]
    return centers[torch.randint(clusters, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)  # [N, D]


def test_codes_in_range_and_residual_falls_each_level():
    x = clustered()
    result = fit_rq_kmeans(x, num_levels=3, codebook_size=16, iters=20, seed=0)
    assert result.codes.shape == (600, 3) and result.codes.dtype == torch.int64
    assert int(result.codes.min()) >= 0 and int(result.codes.max()) < 16
    assert len(result.centroids) == 3 and all(c.shape == (16, 8) for c in result.centroids)
    norms = result.residual_norms
    assert len(norms) == 4
    assert norms[0] == pytest.approx(float(x.double().pow(2).sum(1).mean()))
    assert all(after < before for before, after in zip(norms, norms[1:]))
    # the reported residual matches the reconstruction from codes and centroids
    recon = sum(c[result.codes[:, level]] for level, c in enumerate(result.centroids))
    assert norms[-1] == pytest.approx(float((x - recon).double().pow(2).sum(1).mean()), rel=1e-4)


def test_same_seed_same_codes_different_seed_differs():
    x = clustered(seed=1)
    a = fit_rq_kmeans(x, num_levels=2, codebook_size=16, iters=10, seed=0)
    b = fit_rq_kmeans(x, num_levels=2, codebook_size=16, iters=10, seed=0)
    c = fit_rq_kmeans(x, num_levels=2, codebook_size=16, iters=10, seed=1)
    assert torch.equal(a.codes, b.codes)
    assert all(torch.equal(p, q) for p, q in zip(a.centroids, b.centroids))
    assert not torch.equal(a.codes, c.codes)


def test_encode_reproduces_fit_codes():
    x = clustered(n=500, seed=2)
    result = fit_rq_kmeans(x, num_levels=3, codebook_size=8, iters=15, seed=0)
    assert torch.equal(encode(x, result.centroids), result.codes)


def test_quantizer_encode_on_the_training_rows_gives_the_fit_codes():
    x = clustered(n=400, seed=9).numpy()
    q = RQKMeans(num_levels=3, codebook_size=8, iters=15, seed=0)
    codes = q.fit(x)
    assert codes.shape == (400, 3) and codes.dtype == np.int64
    np.testing.assert_array_equal(q.encode(x), codes)
    # the same fit as the functional API, and the stats are its residual errors
    reference = fit_rq_kmeans(torch.from_numpy(x), num_levels=3, codebook_size=8, iters=15, seed=0)
    np.testing.assert_array_equal(codes, reference.codes.numpy())
    assert q.stats == {"residual_mse": reference.residual_norms}
    # rows not seen at fit time: each code is the nearest centroid of the residual left by the levels above
    new = x[:5] + 0.01
    residual, expected = new.astype(np.float64), []
    for c in q.centroids:
        c = c.double().numpy()
        idx = ((residual[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        expected.append(idx)
        residual = residual - c[idx]
    np.testing.assert_array_equal(q.encode(new), np.stack(expected, 1))


def test_quantizer_save_load_round_trip(tmp_path):
    x = clustered(n=300, seed=10).numpy()
    q = RQKMeans(num_levels=2, codebook_size=8, iters=10, seed=0)
    codes = q.fit(x)
    q.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["centroids_0.npy", "centroids_1.npy"]
    loaded = RQKMeans.load(tmp_path, num_levels=2, codebook_size=8)
    assert (loaded.num_levels, loaded.codebook_size) == (2, 8)
    for mine, theirs in zip(q.centroids, loaded.centroids):
        assert theirs.dtype == torch.float32 and torch.equal(mine, theirs)
    np.testing.assert_array_equal(loaded.encode(x), codes)
    with pytest.raises(ValueError, match="before fit or load"):
        RQKMeans(num_levels=2, codebook_size=8).encode(x)


def test_chunked_encode_matches_brute_force(monkeypatch):
    monkeypatch.setattr(rq, "_CHUNK_ROWS", 7)  # many ragged blocks
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 5, generator=g)
    centroids = [torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g) * 0.3]
    residual, expected = x.double(), []
    for c in centroids:  # reference: exact distances with torch.cdist in float64
        idx = torch.cdist(residual, c.double()).argmin(1)
        expected.append(idx)
        residual = residual - c.double()[idx]
    assert torch.equal(encode(x, centroids), torch.stack(expected, 1))


def test_kmeans_recovers_well_separated_blobs():
    g = torch.Generator().manual_seed(4)
    centers = torch.tensor([[10.0, 0, 0], [-10, 0, 0], [0, 10, 0], [0, -10, 0], [0, 0, 10]])  # [5, 3]
    label = torch.arange(400) % 5
    x = centers[label] + 0.1 * torch.randn(400, 3, generator=g)
    found, assign = kmeans(x, 5, iters=20, generator=torch.Generator().manual_seed(0))
    match = torch.cdist(centers, found).argmin(1)  # nearest found centroid per true center
    assert sorted(match.tolist()) == list(range(5))
    assert torch.allclose(found[match], centers, atol=0.05)
    assert torch.equal(assign, match[label])


def test_dead_centroids_are_reseeded():
    # 8 distinct points with heavy duplication; start every centroid on the same point, so 7 begin empty
    g = torch.Generator().manual_seed(5)
    points = torch.randn(8, 4, generator=g) * 5  # [8, 4]
    x = points[torch.tensor([0] * 40 + [1] * 30 + [2, 3, 4, 5, 6, 7] * 2)]  # [82, 4]
    init = points[:1].repeat(8, 1)  # [8, 4]
    found, assign = kmeans(x, 8, iters=30, generator=torch.Generator().manual_seed(0), init=init)
    assert torch.bincount(assign, minlength=8).min() > 0
    assert torch.allclose(torch.sort(found, dim=0).values, torch.sort(points, dim=0).values, atol=1e-5)
    # after a single iteration the 7 re-seeded centroids are already 7 distinct points, not 7 copies of one
    found, _ = kmeans(x, 8, iters=1, generator=torch.Generator().manual_seed(0), init=init)
    assert len(torch.unique(found, dim=0)) == 8
    # the k-means++ path with the same duplicated data also uses every centroid
    found, assign = kmeans(x, 8, iters=30, generator=torch.Generator().manual_seed(1))
    assert torch.bincount(assign, minlength=8).min() > 0


def test_fewer_distinct_rows_than_k_warns_and_keeps_going(caplog):
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])  # 2 distinct rows
    found, assign = kmeans(x, 3, iters=5, generator=torch.Generator().manual_seed(0))
    assert found.shape == (3, 2) and torch.isfinite(found).all()
    assert len(torch.unique(assign)) == 2
    assert "only 2 of 3 centroids have points" in caplog.text


def test_too_few_rows_for_the_codebook_is_refused():
    """A programming error here (ValueError); the quantize stage turns the same case into a GenrecError that
    names quantize.codebook_size (test_quantize)."""
    with pytest.raises(ValueError, match="10 rows cannot fill a codebook of 16 codes"):
        fit_rq_kmeans(torch.randn(10, 4), num_levels=2, codebook_size=16, iters=5, seed=0)
    with pytest.raises(ValueError, match="kmeans needs at least k=16 rows, got 10"):
        kmeans(torch.randn(10, 4), 16, iters=5, generator=torch.Generator().manual_seed(0))


class ThreadAllReduce:
    """An in-process all-reduce for `world` threads running in lockstep: sums in rank order."""

    def __init__(self, world: int) -> None:
        self.slots: list[torch.Tensor | None] = [None] * world
        self.barrier = threading.Barrier(world, timeout=60)
        self.calls = 0

    def for_rank(self, rank: int):
        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = self.slots[0].clone()
            for other in self.slots[1:]:
                total += other
            self.barrier.wait()  # nobody overwrites a slot before everyone has summed
            if rank == 0:
                self.calls += 1
            return total

        return all_reduce


def run_sharded(fit, shards: list[torch.Tensor], **kwargs) -> list:
    """Run `fit(shard, all_reduce=..., rank=..., **kwargs)` for every shard, one thread per "process"."""
    reducer = ThreadAllReduce(len(shards))
    results: list = [None] * len(shards)
    errors: list = []

    def work(rank: int) -> None:
        try:
            results[rank] = fit(shards[rank], all_reduce=reducer.for_rank(rank), rank=rank, **kwargs)
        except BaseException as err:  # surfaced below; a dead thread would otherwise hang its peer
            errors.append(err)
            reducer.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert reducer.calls > 0
    return results


def test_two_shards_with_all_reduce_match_one_process():
    x = clustered(n=700, seed=6)
    kwargs = dict(num_levels=3, codebook_size=16, iters=20, seed=0)
    full = fit_rq_kmeans(x, **kwargs)
    same = fit_rq_kmeans(x, all_reduce=lambda t: t, **kwargs)  # identity reduction == no reduction
    assert torch.equal(full.codes, same.codes)
    # uneven shards: each "process" sees only its rows, yet both get the one-process centroids
    a, b = run_sharded(fit_rq_kmeans, [x[:250], x[250:]], **kwargs)
    for level in range(3):
        assert torch.equal(a.centroids[level], b.centroids[level])
        assert torch.allclose(a.centroids[level], full.centroids[level], atol=1e-5)
    assert torch.equal(torch.cat([a.codes, b.codes]), full.codes)
    assert a.residual_norms == pytest.approx(full.residual_norms, rel=1e-6)


def test_sharded_reseeding_picks_distinct_points_across_processes():
    # both "processes" hold the same rows, so their farthest candidates coincide and must be de-duplicated
    g = torch.Generator().manual_seed(8)
    points = torch.randn(6, 3, generator=g) * 5  # [6, 3]
    x = points[torch.tensor([0] * 10 + [1, 2, 3, 4, 5])]  # [15, 3]
    init = points[:1].repeat(6, 1)  # every centroid on point 0: 5 dead
    results = run_sharded(kmeans, [x, x.clone()], k=6, iters=1, generator=torch.Generator(), init=init)
    for found, assign in results:
        assert len(torch.unique(found, dim=0)) == 6
    assert torch.equal(results[0][0], results[1][0])


def test_shards_without_all_reduce_would_differ():
    # guards the test above: a shard fitted alone gives other centroids than the all-reduced fit
    x = clustered(n=700, seed=6)
    alone = fit_rq_kmeans(x[:250], num_levels=1, codebook_size=16, iters=20, seed=0)
    full = fit_rq_kmeans(x, num_levels=1, codebook_size=16, iters=20, seed=0)
    assert not torch.allclose(alone.centroids[0], full.centroids[0], atol=1e-3)


def test_add_collision_level_hand_computed():
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2], [0, 0], [3, 3]])
    expected = np.array([[1, 2, 0], [1, 2, 1], [0, 0, 0], [1, 2, 2], [0, 0, 1], [3, 3, 0]])
    out = add_collision_level(codes)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)
    assert add_collision_level(np.zeros((0, 3), dtype=np.int64)).shape == (0, 4)


def test_ids_unique_after_collision_level():
    x = clustered(n=600, seed=7)
    codes = fit_rq_kmeans(x, num_levels=2, codebook_size=4, iters=10, seed=0).codes.numpy()
    assert len(np.unique(codes, axis=0)) < len(codes)  # 16 IDs for 600 items: collisions are certain
    with_suffix = add_collision_level(codes)
    assert len(np.unique(with_suffix, axis=0)) == len(codes)
    np.testing.assert_array_equal(with_suffix[:, :2], codes)


def test_codebook_health_hand_computed():
    codes = np.array([[0, 1], [0, 1], [1, 2], [2, 3]])
    health = codebook_health(codes, codebook_size=4)
    level0, level1 = health["levels"]
    assert level0["used_codes"] == 3 and level0["usage"] == 0.75
    p = np.array([0.5, 0.25, 0.25])
    assert level0["perplexity"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())))
    assert level1["used_codes"] == 3
    assert health["num_ids"] == 3
    assert health["unique_fraction"] == 0.5  # items 2 and 3 are alone; 0 and 1 share (0, 1)
    assert health["collision_groups"] == 1 and health["largest_group"] == 2
