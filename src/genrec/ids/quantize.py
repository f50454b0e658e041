"""Stage `quantize`: item embeddings -> semantic IDs with a quantizer (`quantize.method`: residual k-means,
`rqkmeans`), behind one interface (`Quantizer`).

Reads `item_embeddings_l2norm.npy` (or `item_embeddings_raw.npy` when `quantize.normalize` is false) from
the collab stage (collaborative embeddings, when `collab.enabled`) or the embed stage (text) and writes, in the stage directory:
- `codes.npy`: int64 [N, L], one code in [0, K) per level;
- `codes_with_suffix.npy`: int64 [N, L + 1], plus the collision level (0, 1, 2, ... among items sharing
  all L codes), so every item has a unique semantic ID; the last level has `suffix_size` codes;
- `centroids_<level>.npy`: float32 [K, D] per level;
- `summary.json`: the config, per-level usage and perplexity, residual error per level, the unique fraction
  before the extra level, collision groups, the largest group and the seconds taken.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from genrec.config import QuantizeConfig, to_dict
from genrec.errors import GenrecError
from genrec.files import save_json, save_npy
from genrec.ids.collab import unit_rows
from genrec.ids.random_ids import RandomIDs
from genrec.ids.rqkmeans import RQKMeans, add_collision_level, codebook_health
from genrec.ids.rqvae import RQVAE
from genrec.ids.tokens import TokenIndex
from genrec.plots import CODEBOOK_USAGE, QUANTIZER_TRAINING, codebook_usage, quantizer_training
from genrec.rundir import CODES, EMBEDDINGS, ITEM_IDS, RAW_EMBEDDINGS, SEMANTIC_IDS, SIDS

logger = logging.getLogger(__name__)


def load_embeddings(embed_dir: Path, normalize: bool) -> np.ndarray:
    """The embed (or collab) stage's float32 [N, D] matrix; GenrecError when it is missing, unreadable or
    malformed."""
    rerun = f"rerun 'genrec {Path(embed_dir).name}' (or pass --force)"
    path = Path(embed_dir) / (EMBEDDINGS if normalize else RAW_EMBEDDINGS)
    if not path.is_file():
        raise GenrecError(f"{path} does not exist; {rerun}")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise GenrecError(f"{path} is not a readable .npy file ({str(err).splitlines()[0]}); {rerun}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0 or not np.issubdtype(x.dtype, np.floating):
        raise GenrecError(f"{path} holds a {x.dtype} array of shape {x.shape}, not a float [N, D] matrix; {rerun}")
    if not np.isfinite(x).all():
        raise GenrecError(f"{path} contains NaN or infinite values; {rerun}")
    ids_path = Path(embed_dir) / ITEM_IDS
    if ids_path.is_file():
        try:
            num_ids = len(json.loads(ids_path.read_text()))
        except (ValueError, TypeError) as err:
            raise GenrecError(f"{ids_path} is not a JSON list ({err}); {rerun}")
        if num_ids != x.shape[0]:
            raise GenrecError(f"{path} has {x.shape[0]} rows but {ids_path} lists {num_ids} items; {rerun}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _log_health(summary: dict) -> None:
    K = summary["config"]["codebook_size"]
    lines = ["level  used/K      usage  perplexity  residual"]
    for row in summary["levels"]:
        residual = f"{row['residual_mse']:.5f}" if "residual_mse" in row else "-"
        lines.append(f"{row['level']:>5}  {row['used_codes']:>5}/{K:<5} {row['usage']:>6.3f}  "
                     f"{row['perplexity']:>10.1f}  {residual}")
    if "reconstruction_mse" in summary:
        lines.append(f"reconstruction error {summary['reconstruction_mse']:.5f}")
    lines.append(f"unique IDs before the extra level: {summary['unique_fraction']:.2%} of {summary['num_items']} "
                 f"items; {summary['collision_groups']} collision groups, largest {summary['largest_group']} "
                 f"(extra level size {summary['suffix_size']})")
    logger.info("codebook health\n%s", "\n".join(lines))


class Quantizer(Protocol):
    """Item vectors -> codes of `num_levels` levels in [0, `codebook_size`). `fit` learns from the catalogue's
    vectors (and, for a quantizer with a collaborative term, the items' collaborative vectors) and returns their
    codes; `encode` codes any vectors, items not seen at fit time too."""

    num_levels: int
    codebook_size: int
    stats: dict  # what fitting measured (JSON-able), e.g. the residual error per level

    def fit(self, x: np.ndarray, collab: np.ndarray | None = None) -> np.ndarray: ...  # [N, D] -> [N, L]

    def encode(self, x: np.ndarray) -> np.ndarray: ...  # [M, D] -> [M, L]

    def save(self, directory: Path) -> None: ...

    # and a classmethod `load(directory, *, num_levels, codebook_size)` that gives back the fitted quantizer


QUANTIZERS: dict[str, Callable[[QuantizeConfig], Quantizer]] = {
    "rqkmeans": lambda cfg: RQKMeans(num_levels=cfg.num_levels, codebook_size=cfg.codebook_size, iters=cfg.iters,
                                     seed=cfg.seed),
    "rqvae": lambda cfg: RQVAE(num_levels=cfg.num_levels, codebook_size=cfg.codebook_size,
                               latent_dim=cfg.latent_dim, hidden_dim=cfg.hidden_dim, steps=cfg.steps,
                               batch_size=cfg.batch_size, lr=cfg.lr, beta=cfg.beta, collab_weight=cfg.collab_weight,
                               diversity_weight=cfg.diversity_weight, reseed_every=cfg.reseed_every, seed=cfg.seed),
    "random": lambda cfg: RandomIDs(num_levels=cfg.num_levels, codebook_size=cfg.codebook_size, seed=cfg.seed),
}
LOADERS: dict[str, Callable[..., Quantizer]] = {"rqkmeans": RQKMeans.load, "rqvae": RQVAE.load,
                                                "random": RandomIDs.load}


def load_quantizer(cfg: QuantizeConfig, directory: Path) -> Quantizer:
    """The quantize stage's fitted quantizer."""
    return LOADERS[cfg.method](directory, num_levels=cfg.num_levels, codebook_size=cfg.codebook_size)


def same_items(a_dir: Path, a: np.ndarray, b_dir: Path, b: np.ndarray) -> None:
    """GenrecError unless two stages' matrices cover the same items in the same order."""
    names = [json.loads((d / ITEM_IDS).read_text()) if (d / ITEM_IDS).is_file() else None for d in (a_dir, b_dir)]
    if a.shape[0] != b.shape[0] or (None not in names and names[0] != names[1]):
        raise GenrecError(f"{b_dir} covers other items than {a_dir} ({b.shape[0]} vs {a.shape[0]} rows, or other "
                          f"item IDs); rerun 'genrec {b_dir.name} --force'")


def load_inputs(dirs: list[Path], normalize: bool) -> np.ndarray:
    """The vectors quantized: one stage's matrix, or several side by side (each unit-normalised first), all
    checked to cover the same items."""
    parts = [load_embeddings(Path(d), normalize) for d in dirs]
    for d, part in zip(dirs[1:], parts[1:]):
        same_items(Path(dirs[0]), parts[0], Path(d), part)
    if len(parts) == 1:
        return parts[0]
    return np.ascontiguousarray(np.concatenate([unit_rows(p) for p in parts], axis=1))


def fit_and_encode(quantizer: Quantizer, x: np.ndarray, fit_rows: np.ndarray | None,
                   collab: np.ndarray | None = None) -> np.ndarray:
    """Codes [N, L] of every row of `x` [N, D]: the quantizer is fitted on the `fit_rows` [N] (all: None), with
    the items' collaborative vectors `collab` [N, Dc] when given, and encodes the others, as it would an item
    added after fitting."""
    if fit_rows is None or fit_rows.all():
        return quantizer.fit(x, collab)
    codes = np.empty((x.shape[0], quantizer.num_levels), dtype=np.int64)
    codes[fit_rows] = quantizer.fit(x[fit_rows], None if collab is None else collab[fit_rows])
    codes[~fit_rows] = quantizer.encode(x[~fit_rows])
    return codes


def _tensorboard(history: list[dict], directory: Path) -> None:
    """A fitted quantizer's health over its steps as TensorBoard scalars, when tensorboard is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    writer = SummaryWriter(str(directory))
    for h in history:
        for lv in h["levels"]:
            writer.add_scalar(f"quantize/usage_{lv['level']}", lv["usage"], h["step"])
            writer.add_scalar(f"quantize/perplexity_{lv['level']}", lv["perplexity"], h["step"])
        for key in ("collision_rate", "largest_group", "reconstruction_mse", "quantization_mse"):
            writer.add_scalar(f"quantize/{key}", h[key], h["step"])
    writer.close()


def quantize(cfg: QuantizeConfig, embed_dir: Path | list[Path], out_dir: Path, fit_rows: np.ndarray | None = None,
             collab_dir: Path | None = None) -> dict:
    """Fit the `quantize.method` quantizer on the embed (or collab) stage's vectors, or several stages' side by
    side (only the `fit_rows` [N] when given: the rest are held-out new items, encoded without refitting), with
    the collab stage's vectors from `collab_dir` for a collaborative term, and write codes, the quantizer, the
    semantic IDs as tokens and a summary; returns the summary."""
    dirs = [Path(d) for d in (embed_dir if isinstance(embed_dir, list) else [embed_dir])]
    name = RAW_EMBEDDINGS if not cfg.normalize else EMBEDDINGS
    x = load_inputs(dirs, cfg.normalize)  # [N, D]
    collab = None
    if collab_dir is not None and cfg.collab_weight > 0:
        collab = load_embeddings(Path(collab_dir), normalize=True)  # [N, Dc]
        same_items(dirs[0], x, Path(collab_dir), collab)
    fitted = x.shape[0] if fit_rows is None else int(fit_rows.sum())
    if fitted < cfg.codebook_size:
        what = (f"the catalogue has {fitted} items" if fit_rows is None else
                f"the quantizer is fitted on {fitted} items (the rest are held out as new)")
        raise GenrecError(f"{what}, fewer than quantize.codebook_size="
                          f"{cfg.codebook_size}; lower it (e.g. quantize.codebook_size={max(1, fitted // 4)})")
    start = time.perf_counter()
    quantizer = QUANTIZERS[cfg.method](cfg)
    codes = fit_and_encode(quantizer, x, fit_rows, collab)  # [N, L]
    with_suffix = add_collision_level(codes)  # [N, L + 1]
    health = codebook_health(codes, cfg.codebook_size)
    seconds = time.perf_counter() - start
    if health["unique_fraction"] == 0 and x.shape[0] > 1:
        raise GenrecError(f"quantize.codebook_size={cfg.codebook_size} with quantize.num_levels={cfg.num_levels} "
                          f"gives {health['num_ids']} distinct IDs to {x.shape[0]} items and no item an ID of its "
                          f"own, so the semantic IDs would mean nothing (only the collision level would tell items "
                          f"apart); raise quantize.codebook_size or quantize.num_levels")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    quantizer.save(out_dir)
    save_npy(out_dir / CODES, codes.astype(np.int64))
    save_npy(out_dir / SIDS, with_suffix.astype(np.int64))
    residual = quantizer.stats.get("residual_mse")
    levels = [dict(row, residual_mse=residual[row["level"] + 1]) if residual else row for row in health["levels"]]
    summary = {
        "config": to_dict(cfg),
        "embeddings": " + ".join(f"{d.name}/{name}" for d in dirs),
        "num_items": int(x.shape[0]),
        "fitted_items": fitted,  # the rest are held-out new items, encoded by the fitted quantizer
        "dim": int(x.shape[1]),
        "levels": levels,
        **quantizer.stats,
        "num_ids": health["num_ids"],
        "unique_fraction": health["unique_fraction"],  # share of items whose L codes no other item has
        "collision_groups": health["collision_groups"],
        "largest_group": health["largest_group"],
        "suffix_size": int(with_suffix[:, -1].max()) + 1,  # codes used by the collision level
        "seconds": round(seconds, 3),
    }
    item_ids = json.loads((dirs[0] / ITEM_IDS).read_text()) if (dirs[0] / ITEM_IDS).is_file() else \
        [str(i) for i in range(len(codes))]
    save_json(out_dir / SEMANTIC_IDS, TokenIndex(item_ids, with_suffix).as_dict())
    history = getattr(quantizer, "history", None)
    if history:
        summary["history"] = history
        quantizer_training(history, out_dir / QUANTIZER_TRAINING)
        _tensorboard(history, out_dir / "tensorboard")
    save_json(out_dir / "summary.json", summary)
    codebook_usage(codes, cfg.codebook_size, out_dir / CODEBOOK_USAGE)
    _log_health(summary)
    return summary
