"""The quantize stage on small embedding files the tests write, including missing and corrupt ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genrec.config import QuantizeConfig
from genrec.errors import GenrecError
from genrec.ids.quantize import quantize
from genrec.ids.rqkmeans import RQKMeans
from genrec.ids.tokens import parse_tokens


def write_embeddings(embed_dir, n: int = 300, d: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(10, d)) * 3
    x = (centers[rng.integers(10, size=n)] + rng.normal(size=(n, d))).astype(np.float32)  # [N, D]
    embed_dir.mkdir(parents=True, exist_ok=True)
    np.save(embed_dir / "item_embeddings_raw.npy", x)
    np.save(embed_dir / "item_embeddings_l2norm.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
    (embed_dir / "item_ids.json").write_text(json.dumps([f"i{i}" for i in range(n)]))
    return x


def test_quantize_writes_files_consistent_with_summary(tmp_path):
    write_embeddings(tmp_path / "embed")
    cfg = QuantizeConfig(num_levels=2, codebook_size=8, iters=15, normalize=True, seed=0)
    summary = quantize(cfg, tmp_path / "embed", tmp_path / "quantize")
    out = tmp_path / "quantize"
    codes = np.load(out / "codes.npy")
    with_suffix = np.load(out / "codes_with_suffix.npy")
    centroids = [np.load(out / f"centroids_{level}.npy") for level in range(2)]
    assert codes.shape == (300, 2) and codes.dtype == np.int64
    assert with_suffix.shape == (300, 3) and with_suffix.dtype == np.int64
    np.testing.assert_array_equal(with_suffix[:, :2], codes)
    assert len(np.unique(with_suffix, axis=0)) == 300
    assert all(c.shape == (8, 12) and c.dtype == np.float32 for c in centroids)
    assert json.loads((out / "summary.json").read_text()) == summary

    assert summary["config"]["codebook_size"] == 8 and summary["num_items"] == 300 and summary["dim"] == 12
    for level, row in enumerate(summary["levels"]):
        assert row["used_codes"] == len(np.unique(codes[:, level]))
        assert row["residual_mse"] == summary["residual_mse"][level + 1]
    _, sizes = np.unique(codes, axis=0, return_counts=True)
    assert summary["num_ids"] == len(sizes)
    assert summary["unique_fraction"] == pytest.approx((sizes == 1).sum() / 300)
    assert summary["collision_groups"] == (sizes > 1).sum()
    assert summary["largest_group"] == sizes.max() == with_suffix[:, -1].max() + 1 == summary["suffix_size"]
    # the residual error after the last level is what the saved centroids reconstruct
    x = np.load(tmp_path / "embed" / "item_embeddings_l2norm.npy")
    recon = centroids[0][codes[:, 0]] + centroids[1][codes[:, 1]]
    assert summary["residual_mse"][-1] == pytest.approx(float(((x - recon) ** 2).sum(1).mean()), rel=1e-4)
    assert summary["residual_mse"][0] == pytest.approx(1.0, rel=1e-5)  # unit rows before level 0
    # the saved quantizer loads back and gives the catalogue the codes the stage wrote
    quantizer = RQKMeans.load(out, num_levels=2, codebook_size=8)
    np.testing.assert_array_equal(quantizer.encode(x), codes)


def test_quantize_raw_embeddings_when_not_normalised(tmp_path):
    x = write_embeddings(tmp_path / "embed", n=100)
    summary = quantize(QuantizeConfig(num_levels=1, codebook_size=64, iters=5, normalize=False),
                       tmp_path / "embed", tmp_path / "q")
    assert summary["embeddings"] == "embed/item_embeddings_raw.npy"
    assert summary["residual_mse"][0] == pytest.approx(float((x.astype(np.float64) ** 2).sum(1).mean()), rel=1e-5)


def test_quantize_missing_or_corrupt_embeddings(tmp_path):
    cfg = QuantizeConfig(num_levels=1, codebook_size=4, iters=5)
    with pytest.raises(GenrecError, match=r"item_embeddings_l2norm.npy does not exist; rerun 'genrec embed'"):
        quantize(cfg, tmp_path / "embed", tmp_path / "q")
    with pytest.raises(GenrecError, match=r"rerun 'genrec collab'"):  # the stage that writes the directory
        quantize(cfg, tmp_path / "collab", tmp_path / "q")
    write_embeddings(tmp_path / "embed", n=50)
    (tmp_path / "embed" / "item_embeddings_l2norm.npy").write_bytes(b"not a numpy file")
    with pytest.raises(GenrecError, match=r"not a readable .npy file.*--force"):
        quantize(cfg, tmp_path / "embed", tmp_path / "q")
    np.save(tmp_path / "embed" / "item_embeddings_l2norm.npy", np.zeros(5, dtype=np.float32))
    with pytest.raises(GenrecError, match="not a float"):
        quantize(cfg, tmp_path / "embed", tmp_path / "q")
    np.save(tmp_path / "embed" / "item_embeddings_l2norm.npy", np.ones((49, 12), dtype=np.float32))
    with pytest.raises(GenrecError, match="49 rows but .*item_ids.json lists 50 items"):
        quantize(cfg, tmp_path / "embed", tmp_path / "q")
    assert not (tmp_path / "q" / "codes.npy").exists()


def test_quantize_catalogue_smaller_than_codebook(tmp_path):
    write_embeddings(tmp_path / "embed", n=20)
    with pytest.raises(GenrecError, match="catalogue has 20 items, fewer than quantize.codebook_size=32"):
        quantize(QuantizeConfig(codebook_size=32), tmp_path / "embed", tmp_path / "q")


def test_held_out_items_are_encoded_by_a_quantizer_fitted_without_them(tmp_path):
    x = write_embeddings(tmp_path / "embed")
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    fit_rows = np.random.default_rng(1).random(300) > 0.2
    cfg = QuantizeConfig(num_levels=2, codebook_size=8, iters=15, seed=0)
    summary = quantize(cfg, tmp_path / "embed", tmp_path / "q", fit_rows=fit_rows)
    reference = RQKMeans(num_levels=2, codebook_size=8, iters=15, seed=0)
    fitted = reference.fit(x[fit_rows])  # the same fit on the kept rows alone: held-out rows changed nothing
    codes = np.load(tmp_path / "q" / "codes.npy")
    np.testing.assert_array_equal(codes[fit_rows], fitted)
    np.testing.assert_array_equal(codes[~fit_rows], reference.encode(x[~fit_rows]))
    for level in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / "q" / f"centroids_{level}.npy"), reference.centroids[level])
    assert len(np.unique(np.load(tmp_path / "q" / "codes_with_suffix.npy"), axis=0)) == 300  # every ID unique
    assert summary["fitted_items"] == int(fit_rows.sum()) and summary["num_items"] == 300


def test_rqvae_with_a_collaborative_term_writes_tokens_health_and_its_plot(tmp_path):
    write_embeddings(tmp_path / "embed", n=300, d=12)
    write_embeddings(tmp_path / "collab", n=300, d=6, seed=5)
    cfg = QuantizeConfig(method="rqvae", num_levels=2, codebook_size=8, latent_dim=8, hidden_dim=32, steps=60,
                         batch_size=64, collab_weight=0.5, reseed_every=20, seed=0)
    summary = quantize(cfg, tmp_path / "embed", tmp_path / "q", collab_dir=tmp_path / "collab")
    sids = np.load(tmp_path / "q" / "codes_with_suffix.npy")
    tokens = json.loads((tmp_path / "q" / "semantic_ids.json").read_text())
    assert list(tokens) == [f"i{i}" for i in range(300)]
    assert [list(parse_tokens(t)) for t in tokens.values()] == sids.tolist()
    assert summary["history"][0]["step"] == 6 and summary["history"][-1]["step"] == 60  # after the 6-step warm-up
    assert {"collision_rate", "largest_group", "reconstruction_mse"} <= set(summary["history"][-1])
    assert (tmp_path / "q" / "quantizer_training.png").stat().st_size > 0
    assert (tmp_path / "q" / "rqvae.safetensors").is_file()
    # the collaborative vectors must be the same items'
    write_embeddings(tmp_path / "other", n=299, d=6)
    with pytest.raises(GenrecError, match=r"other covers other items than .*embed \(299 vs 300 rows"):
        quantize(cfg, tmp_path / "embed", tmp_path / "q2", collab_dir=tmp_path / "other")
    assert not (tmp_path / "q2").exists()


def test_text_and_collab_side_by_side_and_random_ids(tmp_path):
    write_embeddings(tmp_path / "embed", n=200, d=12)
    write_embeddings(tmp_path / "collab", n=200, d=6, seed=5)
    summary = quantize(QuantizeConfig(num_levels=2, codebook_size=8, iters=5), [tmp_path / "embed",
                                                                                  tmp_path / "collab"], tmp_path / "q")
    assert summary["dim"] == 18 and summary["embeddings"] == "embed/item_embeddings_l2norm.npy + " \
                                                             "collab/item_embeddings_l2norm.npy"
    summary = quantize(QuantizeConfig(method="random", num_levels=2, codebook_size=8), tmp_path / "embed",
                       tmp_path / "r")
    assert 0.9 < summary["levels"][0]["usage"] <= 1.0  # uniform codes use every code
