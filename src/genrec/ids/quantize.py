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
from genrec.ids.rqkmeans import RQKMeans, add_collision_level, codebook_health
from genrec.plots import CODEBOOK_USAGE, codebook_usage
from genrec.rundir import CODES, EMBEDDINGS, ITEM_IDS, RAW_EMBEDDINGS, SIDS

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
        lines.append(f"{row['level']:>5}  {row['used_codes']:>5}/{K:<5} {row['usage']:>6.3f}  "
                     f"{row['perplexity']:>10.1f}  {row['residual_mse']:.5f}")
    lines.append(f"unique IDs before the extra level: {summary['unique_fraction']:.2%} of {summary['num_items']} "
                 f"items; {summary['collision_groups']} collision groups, largest {summary['largest_group']} "
                 f"(extra level size {summary['suffix_size']})")
    logger.info("codebook health\n%s", "\n".join(lines))


class Quantizer(Protocol):
    """Item vectors -> codes of `num_levels` levels in [0, `codebook_size`). `fit` learns from the catalogue's
    vectors and returns their codes; `encode` codes any vectors, items not seen at fit time too."""

    num_levels: int
    codebook_size: int
    stats: dict  # what fitting measured (JSON-able), e.g. the residual error per level

    def fit(self, x: np.ndarray) -> np.ndarray: ...  # [N, D] -> [N, L]

    def encode(self, x: np.ndarray) -> np.ndarray: ...  # [M, D] -> [M, L]

    def save(self, directory: Path) -> None: ...

    # and a classmethod `load(directory, *, num_levels, codebook_size)` that gives back the fitted quantizer


QUANTIZERS: dict[str, Callable[[QuantizeConfig], Quantizer]] = {
    "rqkmeans": lambda cfg: RQKMeans(num_levels=cfg.num_levels, codebook_size=cfg.codebook_size, iters=cfg.iters,
                                     seed=cfg.seed),
}


def fit_and_encode(quantizer: Quantizer, x: np.ndarray, fit_rows: np.ndarray | None) -> np.ndarray:
    """Codes [N, L] of every row of `x` [N, D]: the quantizer is fitted on the `fit_rows` [N] (all: None) and
    encodes the others, as it would an item added after fitting."""
    if fit_rows is None or fit_rows.all():
        return quantizer.fit(x)
    codes = np.empty((x.shape[0], quantizer.num_levels), dtype=np.int64)
    codes[fit_rows] = quantizer.fit(x[fit_rows])
    codes[~fit_rows] = quantizer.encode(x[~fit_rows])
    return codes


def quantize(cfg: QuantizeConfig, embed_dir: Path, out_dir: Path, fit_rows: np.ndarray | None = None) -> dict:
    """Fit the `quantize.method` quantizer on the embed (or collab) stage's vectors (only the `fit_rows` [N] when
    given: the rest are held-out new items, encoded without refitting) and write codes, the quantizer, and a
    summary; returns the summary."""
    name = RAW_EMBEDDINGS if not cfg.normalize else EMBEDDINGS
    x = load_embeddings(Path(embed_dir), cfg.normalize)  # [N, D]
    fitted = x.shape[0] if fit_rows is None else int(fit_rows.sum())
    if fitted < cfg.codebook_size:
        what = (f"the catalogue has {fitted} items" if fit_rows is None else
                f"the quantizer is fitted on {fitted} items (the rest are held out as new)")
        raise GenrecError(f"{what}, fewer than quantize.codebook_size="
                          f"{cfg.codebook_size}; lower it (e.g. quantize.codebook_size={max(1, fitted // 4)})")
    start = time.perf_counter()
    quantizer = QUANTIZERS[cfg.method](cfg)
    codes = fit_and_encode(quantizer, x, fit_rows)  # [N, L]
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
        "embeddings": f"{Path(embed_dir).name}/{name}",
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
    save_json(out_dir / "summary.json", summary)
    codebook_usage(codes, cfg.codebook_size, out_dir / CODEBOOK_USAGE)
    _log_health(summary)
    return summary
