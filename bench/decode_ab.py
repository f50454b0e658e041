"""Decoding speed of this checkout against another commit's, on one machine, alternating: what tells a change in
the code from a change of machine when a decoding figure moves between two `decode.json`.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000 \\
        python bench/decode_ab.py --base 036dbb6 --codes runs/bench-beauty/quantize/codes_with_suffix.npy

Each side runs in its own process (the base commit from a temporary git worktree) on the same semantic IDs,
random weights (seed 0) and 1,024 Beauty-like histories (3 to 20 items, sorted by length, batches of 256):
constrained beam search at each (shape, beam), the median of three timed passes after a warm-up. The sides
alternate, `--rounds` times each, so that a slow spell of the machine falls on both. Writes
bench/results/decode_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = {"default": {}, "paper": dict(decoder_layers=4, item_tokens="codes", causal_encoder=False,
                                       trie_softmax=False)}


def measure(codes_path: str, shape: str, beam: int) -> float:
    """Users/s of this process's genrec (whichever layout it has) on one (shape, beam)."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    codes = np.load(codes_path)
    sizes = [256] * (codes.shape[1] - 1) + [int(codes[:, -1].max()) + 1]
    try:  # the layout with subpackages
        from genrec.config import TigerConfig as Config
        from genrec.data.batches import Batch
        from genrec.ids.trie import build_trie
        from genrec.models.tiger import Tiger
        from genrec.search import beam_search

        search = lambda m, b, t: beam_search(m.code_decoder(t), b, t, beam_size=beam)  # noqa: E731
    except ImportError:  # the flat layout before it
        from genrec.config import ModelConfig as Config
        from genrec.decode import beam_search
        from genrec.tiger import Batch, Tiger
        from genrec.trie import build_trie

        search = lambda m, b, t: beam_search(m, b, t, beam_size=beam)  # noqa: E731
    torch.manual_seed(0)
    model = Tiger(cfg=Config(**SHAPES[shape]), item_codes=torch.from_numpy(codes), level_sizes=sizes,
                  max_history=20).eval()
    trie = build_trie(codes)
    rng = np.random.default_rng(0)
    hist = [rng.integers(0, len(codes), n) for n in np.sort(rng.integers(3, 21, 1024))]

    def batch(lo: int, hi: int):
        T = max(len(h) for h in hist[lo:hi])
        rows = np.full((hi - lo, T), -1)
        for i, h in enumerate(hist[lo:hi]):
            rows[i, T - len(h):] = h
        return Batch(torch.zeros(hi - lo, dtype=torch.long), torch.from_numpy(rows))

    with torch.no_grad():
        search(model, batch(0, 8), trie)
        passes = []
        for _ in range(3):
            start = time.perf_counter()
            for lo in range(0, len(hist), 256):
                search(model, batch(lo, lo + 256), trie)
            passes.append(time.perf_counter() - start)
    return len(hist) / float(np.median(passes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the commit to compare with (e.g. the one before a refactor)")
    p.add_argument("--codes", required=True, help="codes_with_suffix.npy of a run (e.g. runs/bench-beauty/quantize)")
    p.add_argument("--cases", nargs="+", default=["paper:10", "paper:20", "default:20"], help="shape:beam pairs")
    p.add_argument("--rounds", type=int, default=2, help="times each side runs each case (default 2)")
    p.add_argument("--out", default="bench/results/decode_ab.json")
    p.add_argument("--one", nargs=2, metavar=("SHAPE", "BEAM"), help=argparse.SUPPRESS)  # a child process
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.codes, args.one[0], int(args.one[1]))))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from meta import ROOT, machine, versions

    codes = str(Path(args.codes).resolve())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.base], check=True)
        try:
            sides = {"base": base, "head": ROOT}
            for case in args.cases:
                shape, beam = case.split(":")
                rates: dict[str, list[float]] = {"base": [], "head": []}
                for _ in range(args.rounds):
                    for side, root in sides.items():
                        env = {**os.environ, "PYTHONPATH": str(root / "src")}
                        out = subprocess.run([sys.executable, __file__, "--base", args.base, "--codes", codes,
                                              "--one", shape, beam], env=env, capture_output=True, text=True,
                                             check=True)
                        rates[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
                rows.append({"shape": shape, "beam": int(beam), "users_per_s": rates})
                print(f"{shape:>8} beam {beam:>5}: base {' / '.join(f'{r:.1f}' for r in rates['base'])}   "
                      f"head {' / '.join(f'{r:.1f}' for r in rates['head'])} users/s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    out = {"command": "python " + " ".join(sys.argv), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
           "machine": machine(), "versions": versions(), "base": args.base, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
