"""Codebook health of each quantizer on a run's item embeddings: usage and perplexity per level, the share of items
whose L codes no other item has (before the collision level), the largest collision group, and fit time.

    python bench/quantizers.py [--run runs/bench-beauty] [--threads N] [--out bench/results/quantizers.json]

Reads the run's embed (text) and collab (collaborative) stage outputs; fits, with the settings of
`QuantizeConfig` (3 levels of 256 codes) and seed 0: random IDs, RQ-KMeans on text, RQ-KMeans on the
collaborative embeddings, RQ-VAE on text, and RQ-VAE on text with the collaborative term. What the IDs do for
a model is a TIGER run each (`genrec run ... quantize.method=...`); this only says how well each spreads the items.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from meta import machine, versions

from genrec.config import QuantizeConfig
from genrec.ids.quantize import QUANTIZERS, load_embeddings
from genrec.ids.rqkmeans import codebook_health

ROWS = [  # name, quantizer, inputs, settings
    ("random IDs", "random", "text", {}),
    ("RQ-KMeans on text", "rqkmeans", "text", {}),
    ("RQ-KMeans on collab (the default)", "rqkmeans", "collab", {}),
    ("RQ-VAE on text", "rqvae", "text", {}),
    ("RQ-VAE on text + collaborative term", "rqvae", "text", {"collab_weight": 0.5}),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/bench-beauty", help="a run directory with embed/ and collab/ done")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="bench/results/quantizers.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run = Path(args.run)
    vectors = {"text": load_embeddings(run / "embed", True), "collab": load_embeddings(run / "collab", True)}
    rows = []
    print(f"{'quantizer':<38}{'usage per level':<22}{'perplexity':<18}{'unique':>8}{'largest':>9}{'seconds':>9}")
    for name, method, inputs, settings in ROWS:
        cfg = QuantizeConfig(method=method, **settings)
        start = time.perf_counter()
        collab = vectors["collab"] if settings.get("collab_weight") else None
        codes = QUANTIZERS[method](cfg).fit(vectors[inputs], collab)
        seconds = time.perf_counter() - start
        h = codebook_health(codes, cfg.codebook_size)
        row = {"name": name, "quantizer": method, "inputs": inputs + ("+collab" if collab is not None else ""),
               "settings": settings, "usage": [lv["usage"] for lv in h["levels"]],
               "perplexity": [lv["perplexity"] for lv in h["levels"]], "unique_fraction": h["unique_fraction"],
               "collision_rate": 1 - h["unique_fraction"], "largest_group": h["largest_group"],
               "seconds": round(seconds, 1)}
        rows.append(row)
        print(f"{name:<38}{' '.join(f'{u:.3f}' for u in row['usage']):<22}"
              f"{' '.join(f'{x:.0f}' for x in row['perplexity']):<18}{row['unique_fraction']:>8.4f}"
              f"{row['largest_group']:>9}{seconds:>9.1f}", flush=True)
    out = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "machine": machine(),
           "versions": versions(), "run": str(run), "num_items": int(len(vectors["text"])), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
