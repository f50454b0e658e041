"""RQ-VAE: k-means initialisation uses every code, dead codes come back, the quantized vector is the sum of the
chosen codes, gradients reach the encoder, same seed same codes, the collaborative term pulls quantized vectors
toward the items' collaborative ones, unseen items get valid IDs, and a saved quantizer encodes the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.errors import GenrecError
from genrec.ids.rqvae import RQVAE


def clustered(n: int = 600, d: int = 16, clusters: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors around `clusters` centres, and each item's cluster."""
    rng = np.random.default_rng(seed)
    group = rng.integers(clusters, size=n)
    centres = rng.normal(size=(clusters, d)) * 2
    return (centres[group] + 0.3 * rng.normal(size=(n, d))).astype(np.float32), group


def small(**kw) -> RQVAE:
    args = dict(num_levels=2, codebook_size=8, latent_dim=8, hidden_dim=32, steps=150, batch_size=128,
                lr=3e-3, reseed_every=20, log_every=50, seed=0)
    return RQVAE(**{**args, **kw})


def test_kmeans_initialisation_puts_every_code_in_use_and_the_fit_keeps_them():
    x, _ = clustered()
    q = small()
    codes = q.fit(x)
    assert [lv["used_codes"] for lv in q.history[0]["levels"]] == [8, 8]  # step 0, before any update
    assert all(lv["used_codes"] >= 7 for lv in q.history[-1]["levels"])
    assert codes.shape == (600, 2) and codes.min() >= 0 and codes.max() < 8
    assert q.history[-1]["reconstruction_mse"] < q.history[0]["reconstruction_mse"]  # it learned
    assert {"collision_rate", "largest_group", "levels", "quantization_mse"} <= set(q.history[-1])
    assert set(q.stats) == {"reconstruction_mse", "quantization_mse"}


def test_the_quantized_vector_is_the_sum_of_the_chosen_codes_and_gradients_reach_the_encoder():
    x, _ = clustered()
    q = small(steps=1)
    q.fit(x)
    net = q.net
    z = net.encoder(net.standardise(torch.from_numpy(x[:50])))
    codes, quantized, residuals = net.quantize(z)
    want = sum(net.codebooks[level][codes[:, level]] for level in range(2))
    torch.testing.assert_close(quantized, want)
    torch.testing.assert_close(residuals[1], z - net.codebooks[0][codes[:, 0]])
    net.zero_grad()
    loss, _, _ = q.loss(torch.from_numpy(x[:50]), None)
    loss.backward()
    first = net.encoder[0].weight.grad
    assert first is not None and torch.isfinite(first).all() and first.abs().sum() > 0
    assert torch.isfinite(net.codebooks.grad).all() and net.codebooks.grad.abs().sum() > 0


def test_dead_codes_are_reseeded_with_residuals_of_the_batch():
    x, _ = clustered()
    q = small(steps=1)
    q.fit(x)
    last_used = torch.full((2, 8), 110)  # every code chosen within the last 20 steps
    last_used[0, [2, 5]] = 10  # two codes of level 0 unused since step 10
    residuals = [torch.randn(64, 8), torch.randn(64, 8)]
    before = q.net.codebooks.detach().clone()
    q.reseed(last_used, 120, residuals, torch.Generator().manual_seed(1))
    after = q.net.codebooks.detach()
    changed = (after != before).any(-1)
    assert changed.nonzero().tolist() == [[0, 2], [0, 5]]
    for code in (2, 5):  # each is now one of the batch's residuals
        assert (residuals[0] == after[0, code]).all(1).any()
    assert last_used[0, 2] == 120


def test_same_seed_same_codes_and_another_seed_other_codes():
    x, _ = clustered()
    assert np.array_equal(small().fit(x), small().fit(x))
    assert not np.array_equal(small().fit(x), small(seed=1).fit(x))


def test_the_collaborative_term_pulls_quantized_vectors_toward_the_collaborative_ones():
    # text vectors: a strong grouping (24 clusters) and, in a few weak dimensions, another one (12 groups) that
    # reconstruction barely needs; the collaborative vectors follow the weak one
    rng = np.random.default_rng(3)
    n, strong, weak = 600, rng.integers(24, size=600), rng.integers(12, size=600)
    weak_centres = rng.normal(size=(12, 4))
    x = np.c_[(rng.normal(size=(24, 12)) * 3)[strong], 0.3 * weak_centres[weak]] + 0.05 * rng.normal(size=(n, 16))
    x = x.astype(np.float32)
    collab = np.c_[weak_centres, rng.normal(size=(12, 2))][weak].astype(np.float32)

    def distance(q: RQVAE) -> float:
        """Mean squared residual of the best linear map from the quantized vectors to the (unit) collab ones."""
        with torch.no_grad():
            _, zq, _ = q.net.quantize(q.net.encoder(q.net.standardise(torch.from_numpy(x))))
        a = np.c_[zq.numpy(), np.ones(n)]
        target = collab / np.linalg.norm(collab, axis=1, keepdims=True)
        w, *_ = np.linalg.lstsq(a, target, rcond=None)
        return float(((a @ w - target) ** 2).sum(1).mean())

    plain, aligned = small(steps=300), small(steps=300, collab_weight=1.0)
    plain.fit(x)
    aligned.fit(x, collab)
    assert distance(aligned) < 0.85 * distance(plain)  # measured 0.72 against 0.93


def test_unseen_items_get_valid_ids_and_a_saved_quantizer_encodes_the_same(tmp_path):
    x, _ = clustered()
    q = small()
    q.fit(x[:500])
    unseen = q.encode(x[500:])
    assert unseen.shape == (100, 2) and unseen.min() >= 0 and unseen.max() < 8
    q.save(tmp_path)
    loaded = RQVAE.load(tmp_path, num_levels=2, codebook_size=8)
    assert np.array_equal(loaded.encode(x[500:]), unseen)


def test_too_few_items_for_the_codebook_is_refused():
    x, _ = clustered(n=6)
    with pytest.raises(GenrecError, match="6 items cannot fill a codebook of 8 codes"):
        small().fit(x)
