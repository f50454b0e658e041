"""Does the recency bias cost decoding latency at catalogue scale? An A/B of `model.recency_bias` on and off.

    python bench/recency_latency.py [--users 32] [--out bench/results/recency_latency.json]

Same synthetic catalogues as bench/decode.py's scale part (uniform random 4-level IDs of 256 codes, 1M and 10M
items), same random weights apart from the bias table, beam 20, batch 1; the two models alternate over two
rounds of the same users so that drift in the machine hits both alike. Prints median and mean latency.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import MAX_HISTORY, environment, histories, make_batch, uniform_unique_codes  # noqa: E402

from genrec.config import TigerConfig  # noqa: E402
from genrec.ids.trie import build_trie  # noqa: E402
from genrec.models.tiger import Tiger  # noqa: E402
from genrec.search import beam_search  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=32, help="users per model and round (default 32)")
    p.add_argument("--out", default="bench/results/recency_latency.json")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'items':>12} {'recency bias':>13} {'median ms':>10} {'mean ms':>8}")
    for n in (1_000_000, 10_000_000):
        codes = uniform_unique_codes(rng, n)
        trie = build_trie(codes)
        hist = histories(rng, args.users, n)
        models = {}
        for bias in (True, False):
            torch.manual_seed(0)
            models[bias] = Tiger(cfg=TigerConfig(recency_bias=bias), item_codes=torch.from_numpy(codes),
                                 level_sizes=[256] * 4, max_history=MAX_HISTORY).eval()
        times: dict[bool, list[float]] = {True: [], False: []}
        with torch.no_grad():
            for _ in range(2):
                for bias, model in models.items():
                    beam_search(model.code_decoder(trie), make_batch(hist[:1], model.cfg.num_user_buckets), trie, beam_size=20)
                    for i in range(args.users):
                        start = time.perf_counter()
                        beam_search(model.code_decoder(trie), make_batch(hist[i : i + 1], model.cfg.num_user_buckets), trie, beam_size=20)
                        times[bias].append((time.perf_counter() - start) * 1e3)
        for bias, ms in times.items():
            rows.append({"items": n, "recency_bias": bias, "latency_ms_batch1_median": float(np.median(ms)),
                         "latency_ms_batch1_mean": float(np.mean(ms)), "users": len(ms)})
            print(f"{n:>12,d} {str(bias):>13} {rows[-1]['latency_ms_batch1_median']:>10.2f} "
                  f"{rows[-1]['latency_ms_batch1_mean']:>8.2f}", flush=True)
        del codes, trie, models
    machine, versions = environment()
    out = {"command": "python " + " ".join(sys.argv), "machine": machine, "versions": versions, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
