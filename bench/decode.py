"""Decoding benchmark: genrec's batched trie-constrained beam search against Hugging Face T5 `generate`.

    python bench/decode.py --model runs/beauty/train/best --run-dir runs/beauty [--quick] [--out ...]

Part 1 (Beauty-shaped): two model shapes, each beside a T5ForConditionalGeneration of the same layers and widths
decoding with `generate(num_beams=B, num_return_sequences=B, prefix_allowed_tokens_fn=...)` whose prefix function
walks a nested Python dict trie, the way public TIGER code decodes: genrec's default recipe (the trained Beauty
model with --model, else random weights) and the paper's shape (4+4 layers, one encoder token per code, random
weights). Users/s of `beam_search` (KV cache) at beams 10, 20, 100, 1000 and of exact full-catalogue scoring
(`score_catalog`), on Beauty-like histories. The weights differ between the two sides, so the items differ; what
must hold is that both return only catalogue items. Both encoders are also timed alone on the beam-20 users: no
decoder can be faster than its encoder, which bounds the speed-up (`encoder_bound`). With --run-dir, the run's
full evaluation (valid and test, every user, Recall/NDCG up to 1000) is timed as the evaluator runs it, in
float32 and bfloat16.

Part 2 (scale): uniform random 4-level semantic IDs for 100k, 1M and 10M items (duplicates dropped): trie build
time and memory, and beam-20 latency at batch 1 and batch 256.

Timings are wall-clock on CPU with torch threads = the machine's cores; a shared machine distorts them.
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

from genrec.config import TigerConfig
from genrec.data.batches import Batch
from genrec.ids.rqkmeans import add_collision_level
from genrec.ids.trie import build_trie
from genrec.models.checkpoint import load_model
from genrec.models.tiger import Tiger
from genrec.search import beam_search, score_catalog

# The paper's model shape, for the side-by-side with T5; genrec's default recipe (TigerConfig()) is measured too.
PAPER_SHAPE = TigerConfig(decoder_layers=4, item_tokens="codes", causal_encoder=False, trie_softmax=False)
BEAUTY_ITEMS, BEAUTY_USERS = 12_101, 22_363  # users evaluated on each of the valid and test splits
BEAMS = (10, 20, 100, 1000)
MAX_HISTORY = 20
DTYPES = {"float32": "", "bfloat16": "_bf16"}  # method-name suffix per dtype (bfloat16: autocast on both sides)
SPECIALS = 2  # T5 vocabulary: 0 = pad (also the decoder start), 1 = eos; codes follow

# Users timed per measurement: (default, --quick). Per-beam batch sizes: genrec shares the encoder memory
# across beams, so its cost per batch is ~B*W decoder rows; HF copies the encoder output and its cross-attention
# cache per beam (~1 MB per beam for an 80-token history), so its batch is capped at HF_MAX_ROWS beams, and at
# HF_MAX_BATCH users: its rate is highest at 64 to 128 users per call and lower at 256 (measured at beams 10, 20).
GENREC_USERS = {10: (2048, 128), 20: (2048, 128), 100: (512, 64), 1000: (64, 8)}
GENREC_BATCH = {10: 256, 20: 256, 100: 256, 1000: 32}
HF_USERS = {10: (256, 16), 20: (256, 8), 100: (32, 2), 1000: (4, 1)}
HF_MAX_ROWS, HF_MAX_BATCH = 4096, 128
REPEATS = {10: 3, 20: 3}  # timed passes per measurement at these beams (median kept); one elsewhere
EXACT_USERS, EXACT_BATCH = (8, 1), 4  # score_catalog holds ~0.8 GB per user (all trie nodes' caches)
SCALE_ITEMS = ((100_000, 1_000_000, 10_000_000), (100_000, 1_000_000))
SCALE_BATCH1_USERS, SCALE_BATCH256_BATCHES = (16, 8), (2, 1)


# ---- data ------------------------------------------------------------------------------------------------
def skewed_codes(rng: np.random.Generator, n: int, levels: int = 3, K: int = 256, alpha: float = 0.8) -> np.ndarray:
    """[n, levels + 1]: each level's code drawn from p(rank r) ~ (r + 1)^-alpha over a random permutation of the
    K codes (some codes common, a long tail rare), then the collision level makes every ID unique."""
    p = 1.0 / np.arange(1, K + 1) ** alpha
    p /= p.sum()
    codes = np.stack([rng.permutation(K)[rng.choice(K, size=n, p=p)] for _ in range(levels)], axis=1)
    return add_collision_level(codes)


def uniform_unique_codes(rng: np.random.Generator, n: int, levels: int = 4, K: int = 256) -> np.ndarray:
    """[n, levels] uniform random codes, duplicate IDs dropped (the widest trie for n items)."""
    keys = np.unique(rng.integers(0, K**levels, size=int(n * 1.01) + 1000, dtype=np.int64))
    keys = rng.permutation(keys)[:n]
    assert keys.size == n
    return np.stack([(keys // K ** (levels - 1 - i)) % K for i in range(levels)], axis=1)


def histories(rng: np.random.Generator, n: int, num_items: int, p: float = 0.16) -> np.ndarray:
    """[n, MAX_HISTORY] item indices, left-padded with -1. Lengths 3 + Geometric(p) - 1 capped at 20: median 6,
    mean ~8 (Beauty: median 6, mean 8.9 interactions per user, histories cut to 20)."""
    lengths = np.minimum(2 + rng.geometric(p, n), MAX_HISTORY)
    items = rng.integers(0, num_items, size=(n, MAX_HISTORY))
    return np.where(np.arange(MAX_HISTORY)[::-1][None] < lengths[:, None], items, -1)


def make_batch(hist: np.ndarray, buckets: int) -> Batch:
    """Rows of `hist` -> a Batch trimmed to its longest history (no padding to MAX_HISTORY)."""
    longest = int((hist >= 0).sum(1).max())
    users = torch.arange(len(hist)) % buckets + 1 if buckets else torch.zeros(len(hist), dtype=torch.long)
    return Batch(users, torch.from_numpy(np.ascontiguousarray(hist[:, -longest:])))


# ---- measurement helpers -------------------------------------------------------------------------------------
def reset_peak_rss() -> None:
    try:  # writing 5 to clear_refs resets VmHWM (Linux)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def rss_mb(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(run, to_items, n_users: int, batch: int, beam: int) -> dict:
    """Decode users [0, n_users) in batches with `run(lo, hi)` (timed) and check its output with `to_items`
    (untimed): every returned item must be a catalogue item, and no user may get the same item twice. At the
    beams of REPEATS the whole pass runs several times and the median pass sets the rate (one pass lasts about a
    second, and a single one moves by 20% on a shared machine)."""
    passes, invalid, dup_users, returned = [], 0, 0, 0
    batch = min(batch, n_users)
    rss_before = rss_mb("VmRSS")
    reset_peak_rss()
    for rep in range(REPEATS.get(beam, 1)):
        seconds = 0.0
        for lo in range(0, n_users, batch):
            hi = min(lo + batch, n_users)
            start = time.perf_counter()
            out = run(lo, hi)
            seconds += time.perf_counter() - start
            if rep == 0:
                items = to_items(out).reshape(hi - lo, beam)  # [b, W] item indices, -1 = not a catalogue item
                returned += items.size
                invalid += int((items < 0).sum())
                dup_users += sum(len(set(r[r >= 0].tolist())) < int((r >= 0).sum()) for r in items)
        passes.append(seconds)
    seconds = float(np.median(passes))
    return {"users": n_users, "batch": batch, "seconds": seconds, "users_per_s": n_users / seconds,
            "pass_seconds": passes, "returned": returned, "invalid": invalid, "users_with_duplicates": dup_users,
            "rss_before_mb": round(rss_before), "peak_rss_mb": round(rss_mb())}


def time_batches(run, n_users: int, batch: int) -> dict:
    """Wall time of `run(lo, hi)` over users [0, n_users) in batches (after one untimed warm-up batch)."""
    batch = min(batch, n_users)
    run(0, batch)
    start = time.perf_counter()
    for lo in range(0, n_users, batch):
        run(lo, min(lo + batch, n_users))
    seconds = time.perf_counter() - start
    return {"users": n_users, "batch": batch, "seconds": seconds, "users_per_s": n_users / seconds}


# ---- the Hugging Face side ---------------------------------------------------------------------------------
def hf_batch(beam: int) -> int:
    """Users per generate call: generate copies the encoder output and cross-attention cache per beam."""
    return max(1, min(HF_MAX_BATCH, HF_MAX_ROWS // beam))


def hf_model(level_sizes: list[int], cfg: TigerConfig, seed: int):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed + 1)
    config = T5Config(vocab_size=SPECIALS + sum(level_sizes), d_model=cfg.d_model, d_kv=cfg.head_dim,
                      num_heads=cfg.num_heads, d_ff=cfg.d_ff, num_layers=cfg.encoder_layers,
                      num_decoder_layers=cfg.decoder_layers, dropout_rate=cfg.dropout, pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config).eval()


def dict_trie(tokens: np.ndarray) -> dict:
    """Nested dicts {token: {token: ...}} over the catalogue's token sequences (what public TIGER code walks)."""
    root: dict = {}
    for row in tokens.tolist():
        node = root
        for t in row:
            node = node.setdefault(t, {})
    return root


def hf_inputs(model, tokens: np.ndarray, h: np.ndarray, item_tokens: str) -> dict:
    """The encoder inputs of users' histories h [b, T] (-1 padded on the left), cut to the longest one."""
    h = h[:, -int((h >= 0).sum(1).max()):]
    if item_tokens == "sum":
        emb = model.get_input_embeddings()(torch.from_numpy(tokens[h.clip(0)])).sum(2)  # [b, T, D]
        return {"inputs_embeds": emb, "attention_mask": torch.from_numpy(h >= 0)}
    ids = torch.from_numpy(np.where(h[..., None] >= 0, tokens[h.clip(0)], 0).reshape(len(h), -1))  # [b, T*C]
    return {"input_ids": ids, "attention_mask": ids > 0}


def hf_decoder(model, tokens: np.ndarray, hist: np.ndarray, beam: int, item_tokens: str = "codes"):
    """(run, to_items) for `measure`: generate over users' histories, one call per batch. item_tokens "codes":
    one encoder token per code (input_ids); "sum": one per item, the sum of its codes' T5 embeddings
    (inputs_embeds), as genrec's default recipe feeds its encoder."""
    root, C = dict_trie(tokens), tokens.shape[1]
    sid_item = {tuple(r): i for i, r in enumerate(tokens.tolist())}

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        node = root
        for t in sent.tolist()[1:]:  # skip the decoder start token
            node = node[t]
        return list(node) or [1]

    def run(lo: int, hi: int) -> torch.Tensor:
        kw = dict(num_beams=beam, num_return_sequences=beam, max_new_tokens=C, do_sample=False,
                  prefix_allowed_tokens_fn=allowed)
        return model.generate(**hf_inputs(model, tokens, hist[lo:hi], item_tokens), **kw)

    def to_items(seqs: torch.Tensor) -> np.ndarray:
        return np.array([sid_item.get(tuple(s[1 : 1 + C]), -1) for s in seqs.tolist()])

    return run, to_items


# ---- part 1: Beauty-shaped decoding -------------------------------------------------------------------------
def beauty(args: argparse.Namespace, rng: np.random.Generator, q: int) -> tuple[dict, dict, list[str]]:
    """Both shapes side by side: genrec's default recipe (the trained model with --model) and the paper's, each
    against a T5 of the same widths, depths and encoder tokens."""
    notes = []
    if args.model:
        model = load_model(Path(args.model)).eval()
        codes = model.item_codes.numpy()
        notes.append(f"default shape: the trained model {args.model}, with its own semantic IDs ({len(codes)} items)")
    else:
        if args.codes:
            codes = np.load(args.codes).astype(np.int64)
            notes.append(f"semantic IDs read from {args.codes}")
        else:
            codes = skewed_codes(rng, BEAUTY_ITEMS)
        sizes = [256] * (codes.shape[1] - 1) + [int(codes[:, -1].max()) + 1]
        torch.manual_seed(args.seed)
        model = Tiger(cfg=TigerConfig(), item_codes=torch.from_numpy(codes), level_sizes=sizes,
                      max_history=MAX_HISTORY).eval()
        notes.append("default shape: TigerConfig() with random weights")
    sizes, N = model.level_sizes, len(codes)
    torch.manual_seed(args.seed)
    paper = Tiger(cfg=PAPER_SHAPE, item_codes=torch.from_numpy(codes), level_sizes=sizes,
                  max_history=MAX_HISTORY).eval()
    trie = build_trie(codes)
    tokens = SPECIALS + codes + np.cumsum([0] + sizes[:-1])  # [N, C] T5 token ids
    n_max = max(v[q] for v in (*GENREC_USERS.values(), *HF_USERS.values(), EXACT_USERS))
    hist = histories(rng, n_max, N)
    if not args.unsorted:  # batches of similar length for both sides, as genrec's evaluator batches its users
        hist = hist[np.argsort((hist >= 0).sum(1), kind="stable")]

    def sample(n: int) -> np.ndarray:
        """n users spread evenly over the list, so that every measurement sees the same length distribution
        whatever its size (and, sorted, batches of similar lengths)."""
        return hist[np.linspace(0, len(hist) - 1, n).round().astype(int)]
    data = {"items": N, "level_sizes": sizes, "trie_max_children": trie.max_children,
            "trie_nodes": [trie.num_nodes(d) for d in range(trie.depth + 1)],
            "history_len_median": float(np.median((hist >= 0).sum(1))),
            "history_len_mean": float((hist >= 0).sum(1).mean()),
            "default_shape": {k: v for k, v in model.cfg.__dict__.items()}}
    print(f"catalogue {N} items, level sizes {sizes}, trie max children {trie.max_children}; "
          f"history length median {data['history_len_median']:.0f}, mean {data['history_len_mean']:.1f}")

    def genrec_run(beam: int, net: Tiger, users: np.ndarray):
        buckets = net.cfg.num_user_buckets

        def run(lo: int, hi: int) -> torch.Tensor:
            return beam_search(net.code_decoder(trie), make_batch(users[lo:hi], buckets), trie, beam_size=beam).items
        return run

    def genrec_items(items: torch.Tensor) -> np.ndarray:
        items = items.numpy()
        ok = items >= 0
        in_trie = trie.contains(model.item_codes[torch.from_numpy(items[ok])]).numpy()
        ok[ok] = in_trie  # also check the item's semantic ID is a complete path of the trie
        return np.where(ok, items, -1)

    results: dict = {}
    with torch.no_grad():
        for shape, net in (("", model), ("_paper_shape", paper)):
            hf = hf_model(sizes, net.cfg, args.seed)
            for dtype in DTYPES:  # both sides in float32, then both under bfloat16 autocast
                tag = shape + DTYPES[dtype]
                autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
                with autocast:
                    beam_search(net.code_decoder(trie), make_batch(hist[:8], net.cfg.num_user_buckets), trie, beam_size=10)  # warm-up
                    hf_decoder(hf, tokens, hist, 10, net.cfg.item_tokens)[0](0, 4)
                for beam in BEAMS:
                    with autocast:
                        n = GENREC_USERS[beam][q]
                        r = measure(genrec_run(beam, net, sample(n)), genrec_items, n, GENREC_BATCH[beam], beam)
                    results.setdefault("genrec" + tag, {})[beam] = r
                    print(f"  {'genrec' + tag:<28} beam {beam:5d}: {r['users_per_s']:9.1f} users/s  ({r['users']} "
                          f"users, batch {r['batch']}, {r['seconds']:.1f}s, peak RSS {r['peak_rss_mb']} MB)", flush=True)
                for beam in BEAMS:
                    n = HF_USERS[beam][q]
                    run, to_items = hf_decoder(hf, tokens, sample(n), beam, net.cfg.item_tokens)
                    batch = hf_batch(beam)
                    with autocast:
                        r = measure(run, to_items, n, batch, beam)
                    results.setdefault("hf_generate" + tag, {})[beam] = r
                    print(f"  {'hf_generate' + tag:<28} beam {beam:5d}: {r['users_per_s']:9.1f} users/s  ({r['users']} "
                          f"users, batch {r['batch']}, {r['seconds']:.1f}s, peak RSS {r['peak_rss_mb']} MB)", flush=True)
                # the encoders alone, on the users and batches of the beam-20 runs: the share neither side can beat
                users = sample(GENREC_USERS[20][q])
                with autocast:
                    r = time_batches(lambda lo, hi: net.encode(make_batch(users[lo:hi], net.cfg.num_user_buckets)),
                                     len(users), GENREC_BATCH[20])
                results.setdefault("genrec_encoder" + tag, {})["all"] = r
                users = sample(HF_USERS[20][q])
                with autocast:
                    r = time_batches(lambda lo, hi: hf.get_encoder()(**hf_inputs(hf, tokens, users[lo:hi],
                                                                                 net.cfg.item_tokens)),
                                     len(users), hf_batch(20))
                results.setdefault("hf_encoder" + tag, {})["all"] = r
                print(f"  encoders alone{tag}: genrec {results['genrec_encoder' + tag]['all']['users_per_s']:.1f} "
                      f"users/s, T5 {r['users_per_s']:.1f} users/s", flush=True)
        n_exact, eb = EXACT_USERS[q], min(EXACT_BATCH, EXACT_USERS[q])
        rss_before = rss_mb("VmRSS")
        reset_peak_rss()
        start = time.perf_counter()
        exact_users = sample(n_exact)
        for lo in range(0, n_exact, eb):
            scores = score_catalog(model.code_decoder(trie), make_batch(exact_users[lo : lo + eb], model.cfg.num_user_buckets),
                                   trie)
        seconds = time.perf_counter() - start
        assert scores.shape[1] == N and bool(torch.isfinite(scores).all())
        results["genrec_exact"] = {"all": {"users": n_exact, "batch": eb, "seconds": seconds,
                                           "users_per_s": n_exact / seconds,
                                           "rss_before_mb": round(rss_before), "peak_rss_mb": round(rss_mb())}}
        print(f"  genrec_exact (all {N} items): {n_exact / seconds:9.2f} users/s  ({n_exact} users, {seconds:.1f}s)")
    data["runs"] = results
    return data, results, notes


def beauty_evaluation(run_dir: Path, beam: int, dtype: str) -> dict:
    """The real thing: `genrec evaluate`'s evaluation of a trained run, valid and test, every user, timed."""
    from genrec.config import load_config
    from genrec.evaluation.evaluator import evaluate_split
    from genrec.rundir import RunDir
    from genrec.workspace import load_workspace

    run = RunDir(run_dir)
    cfg = load_config(run.config, [])
    ws = load_workspace(cfg, run)
    model = load_model(run.model).eval()
    out: dict = {"run_dir": str(run_dir), "beam_size": beam, "dtype": dtype, "seconds": {}, "metrics": {}}
    for split, eval_set in (("valid", ws.split.valid), ("test", ws.split.test)):
        r = evaluate_split(model, eval_set, ws.user_bucket, split=split, beam_size=beam, ks=(5, 10, 20, 100, 1000),
                           batch_size=cfg.evaluate.batch_size, exclude_history=cfg.evaluate.exclude_history,
                           dtype=dtype)
        out["seconds"][split], out["users_" + split] = r.seconds, r.users
        out["metrics"].update(r.metrics)
        print(f"  {split}: {r.users} users in {r.seconds:.1f} s (beam {beam}, {dtype}); recall@10 "
              f"{r.metrics[f'{split}/generative/recall@10']:.4f}, recall@1000 "
              f"{r.metrics.get(f'{split}/generative/recall@1000', float('nan')):.4f}", flush=True)
    out["seconds"]["total"] = sum(out["seconds"].values())
    return out


# ---- part 2: scale -----------------------------------------------------------------------------------------
def scale(args: argparse.Namespace, rng: np.random.Generator, q: int) -> list[dict]:
    rows = []
    for n in SCALE_ITEMS[q]:
        reset_peak_rss()
        codes = uniform_unique_codes(rng, n)
        start = time.perf_counter()
        trie = build_trie(codes)
        build_s = time.perf_counter() - start
        torch.manual_seed(args.seed)
        model = Tiger(cfg=TigerConfig(), item_codes=torch.from_numpy(codes), level_sizes=[256] * 4,
                      max_history=MAX_HISTORY).eval()
        buckets = model.cfg.num_user_buckets
        n_single, n_batches = SCALE_BATCH1_USERS[q], SCALE_BATCH256_BATCHES[q]
        hist = histories(rng, max(n_single, 256 * n_batches), n)
        with torch.no_grad():
            beam_search(model.code_decoder(trie), make_batch(hist[:1], buckets), trie, beam_size=20)  # warm-up
            single_ms = []
            for i in range(n_single):
                start = time.perf_counter()
                items = beam_search(model.code_decoder(trie), make_batch(hist[i : i + 1], buckets), trie, beam_size=20).items
                single_ms.append((time.perf_counter() - start) * 1e3)
            batch1_ms = float(np.median(single_ms))
            start = time.perf_counter()
            for b in range(n_batches):
                items = beam_search(model.code_decoder(trie), make_batch(hist[b * 256 : (b + 1) * 256], buckets), trie, beam_size=20).items
            batch256_ms = (time.perf_counter() - start) / (256 * n_batches) * 1e3
        assert bool((items >= 0).all()) and bool(trie.contains(model.item_codes[items.flatten()]).all())
        rows.append({"items": n, "trie_build_s": build_s, "trie_mb": trie.nbytes() / 2**20,
                     "latency_ms_batch1": batch1_ms, "latency_ms_batch1_mean": float(np.mean(single_ms)),
                     "latency_ms_per_user_batch256": batch256_ms, "trie_max_children": trie.max_children,
                     "trie_nodes": [trie.num_nodes(d) for d in range(trie.depth + 1)],
                     "batch1_users": n_single, "batch256_batches": n_batches, "peak_rss_mb": round(rss_mb())})
        print(f"  {n:>10,d} items: build {build_s:6.2f}s  trie {rows[-1]['trie_mb']:7.1f} MB  "
              f"batch 1 {batch1_ms:6.1f} ms "
              f"(median; mean {np.mean(single_ms):.1f})  batch 256 {batch256_ms:6.2f} ms/user", flush=True)
        del codes, trie, model, hist
    return rows


# ---- driver ------------------------------------------------------------------------------------------------
def environment() -> tuple[dict, dict]:
    return machine(), versions("transformers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few users and no 10M catalogue (about a minute)")
    parser.add_argument("--out", default="bench/results/decode.json", help="where to write the JSON result")
    parser.add_argument("--model", default="", help="a trained genrec model directory (uses its semantic IDs)")
    parser.add_argument("--codes", default="", help="codes_with_suffix.npy to use instead of synthetic IDs")
    parser.add_argument("--seed", type=int, default=0, help="seed of codes, histories and random weights")
    parser.add_argument("--skip-scale", action="store_true", help="run part 1 only")
    parser.add_argument("--run-dir", default="", help="a trained run directory: time its full evaluation too")
    parser.add_argument("--eval-beam", type=int, default=1000, help="beam of the timed full evaluation")
    parser.add_argument("--unsorted", action="store_true",
                        help="batch users in random order instead of by history length (both sides)")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    q = 1 if args.quick else 0
    rng = np.random.default_rng(args.seed)
    machine, versions = environment()
    print(f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_mb'] // 1024} GB; torch {versions['torch']}, "
          f"transformers {versions['transformers']}")

    print("\n== Beauty-shaped decoding: users/s ==")
    data, runs, notes = beauty(args, rng, q)
    users_per_s = {m: {str(b): r["users_per_s"] for b, r in v.items()} for m, v in runs.items()}
    def ratio(ours: str, theirs: str) -> dict[str, float]:
        return {str(b): users_per_s[ours][str(b)] / users_per_s[theirs][str(b)] for b in BEAMS}

    def best(method: str) -> dict[str, float]:  # the faster dtype at each beam
        return {str(b): max(users_per_s[method + DTYPES[d]][str(b)] for d in DTYPES) for b in BEAMS}

    speedup, speedup_bf16 = ratio("genrec", "hf_generate"), ratio("genrec_bf16", "hf_generate_bf16")
    speedup_paper = ratio("genrec_paper_shape", "hf_generate_paper_shape")
    speedup_paper_bf16 = ratio("genrec_paper_shape_bf16", "hf_generate_paper_shape_bf16")
    speedup_best = {b: v / best("hf_generate")[b] for b, v in best("genrec").items()}
    speedup_paper_best = {b: v / best("hf_generate_paper_shape")[b] for b, v in best("genrec_paper_shape").items()}
    eval_users = 2 * BEAUTY_USERS
    projected = {f"beam_{b}": eval_users / users_per_s["genrec"][str(b)] for b in BEAMS}
    projected["exact"] = eval_users / users_per_s["genrec_exact"]["all"]
    ok = lambda r: r["invalid"] == 0 and r["users_with_duplicates"] == 0  # noqa: E731
    for shape, name in (("", "default shape"), ("_paper_shape", "paper shape")):
        print(f"\n{name}: users/s{'':>4} {'genrec fp32':>11} {'hf fp32':>8} {'speedup':>8} {'genrec bf16':>12} "
              f"{'hf bf16':>8} {'speedup':>8} {'best vs best':>13}   valid items")
        for b in BEAMS:
            rs = [runs[m + shape + DTYPES[d]][b] for d in DTYPES for m in ("genrec", "hf_generate")]
            valid = "yes" if all(ok(r) for r in rs) else "NO"
            fp, bf = ratio("genrec" + shape, "hf_generate" + shape), ratio("genrec" + shape + "_bf16",
                                                                         "hf_generate" + shape + "_bf16")
            top = speedup_best if not shape else speedup_paper_best
            print(f"  beam {b:5d}{'':>8} {rs[0]['users_per_s']:11.1f} {rs[1]['users_per_s']:8.1f} {fp[str(b)]:7.1f}x "
                  f"{rs[2]['users_per_s']:12.1f} {rs[3]['users_per_s']:8.1f} {bf[str(b)]:7.1f}x {top[str(b)]:12.1f}x"
                  f"   {valid}")
    print(f"exact scoring: {users_per_s['genrec_exact']['all']:.2f} users/s")
    beauty_eval: dict = {"projected_from_users_per_s": projected}
    if args.run_dir:
        print(f"\n== Full Beauty evaluation of {args.run_dir}: valid + test, every user ==")
        for dtype in ("float32", "bfloat16"):
            r = beauty_evaluation(Path(args.run_dir), args.eval_beam, dtype)
            beauty_eval[dtype] = r
        beauty_eval["total"] = min(beauty_eval[d]["seconds"]["total"] for d in ("float32", "bfloat16"))
    validity = {m: {str(b): {k: r[k] for k in ("returned", "invalid", "users_with_duplicates")}
                    for b, r in runs[m].items()} for m in runs if "returned" in next(iter(runs[m].values()))}
    encoder_bound = {}
    for tag in ("", "_bf16", "_paper_shape", "_paper_shape_bf16"):
        ours, hf = users_per_s["genrec" + tag]["20"], users_per_s["hf_generate" + tag]["20"]
        ours_enc, hf_enc = users_per_s["genrec_encoder" + tag]["all"], users_per_s["hf_encoder" + tag]["all"]
        encoder_bound[tag.strip("_") or "float32"] = {
            "genrec_encoder_share_beam_20": ours / ours_enc,
            "hf_encoder_share_beam_20": hf / hf_enc,
            "speedup_if_genrec_decoding_were_free_beam_20": ours_enc / hf,
            "speedup_beyond_the_encoders_beam_20": (1 / hf - 1 / hf_enc) / (1 / ours - 1 / ours_enc),
        }
    print("\nbeam 20, the encoders' part: " + "; ".join(
        f"{k}: genrec encoder {v['genrec_encoder_share_beam_20']:.0%} of its time, T5 encoder "
        f"{v['hf_encoder_share_beam_20']:.0%}; free decoding would give {v['speedup_if_genrec_decoding_were_free_beam_20']:.1f}x, "
        f"beyond the encoders {v['speedup_beyond_the_encoders_beam_20']:.1f}x" for k, v in encoder_bound.items()))
    g1000, ex = runs["genrec"][1000], runs["genrec_exact"]["all"]
    notes += [
        f"at beams {sorted(REPEATS)} every measurement is the median of {max(REPEATS.values())} timed passes over its "
        "users (pass_seconds has each), at the other beams one pass",
        "users are batched in order of history length on both sides (--unsorted: random order), as genrec's "
        "evaluator batches them: a batch's encoder input is cut to its longest history",
        "speedup_vs_hf: both in float32; speedup_vs_hf_bf16: both under torch.autocast(bfloat16); "
        "speedup_vs_hf_best_dtype: each side's faster dtype at that beam",
        "genrec: beam_search over the model's code_decoder returning the items; hf_generate: T5ForConditionalGeneration.generate "
        "with num_beams=B, num_return_sequences=B, max_new_tokens=levels and a prefix_allowed_tokens_fn walking "
        "nested dicts; every returned item of both is checked to be a catalogue item, once per user",
        "shapes: the default one is genrec's default recipe (4 encoder layers over one token per item, 1 decoder "
        "layer, d_model 128, 6 heads x 64, d_ff 1024); its T5 gets the same layers and widths and one encoder token "
        "per item (inputs_embeds = sum of the item's code embeddings). The paper shape is 4+4 layers over one token "
        "per code (80 tokens for 20 items), random weights for both, full softmax",
        f"genrec batch {g1000['batch']} at beam 1000: RSS {g1000['rss_before_mb']} MB before, peak "
        f"{g1000['peak_rss_mb']} MB",
        f"score_catalog: batch {ex['batch']}, RSS {ex['rss_before_mb']} MB before, peak {ex['peak_rss_mb']} MB",
        f"hf_generate batch = min({HF_MAX_BATCH}, {HF_MAX_ROWS} // beam): generate copies encoder outputs and the "
        "cross-attention cache per beam; its rate was highest at 64 to 128 users per call and lower at 256",
        "T5 has relative position buckets and a ReLU feed-forward; Tiger has learned positions, GELU and a user token",
        "beauty_eval_seconds: float32 / bfloat16 are measured runs of the evaluator (evaluate_split over valid and "
        "test, every user, k up to 1000, target ranks by pruned beam search, exclude_history as the run's config); "
        "total is the faster; projected_from_users_per_s divides 2 x 22,363 users by the beam-search rates above",
        "encoder_bound: both sides' encoders timed alone on the beam-20 users and batches; "
        "speedup_if_genrec_decoding_were_free = genrec encoder users/s / hf_generate users/s, the most any decoder "
        "could give against this baseline; speedup_beyond_the_encoders compares the time past the encoder",
        "scale: uniform random 4 x 256 codes, duplicates dropped; Tiger vocabulary 4 x 256; latency_ms_batch1 is the "
        "median of single-user calls (a loaded machine stalls multi-threaded small ops: see the mean)",
    ]
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine, "versions": versions,
        "settings": {"quick": args.quick, "seed": args.seed, "beams": list(BEAMS), "repeats": REPEATS,
                     **{f"{m}_{k}": {b: r[k] for b, r in runs[m].items()} for m in runs for k in ("batch", "users")},
                     "model": args.model or "random weights, default shape",
                     "codes": args.codes or ("the model's" if args.model else "synthetic skewed 3 x 256 + collision"),
                     "scale_items": list(SCALE_ITEMS[q]) if not args.skip_scale else [],
                     "scale_batch1_users": SCALE_BATCH1_USERS[q], "scale_batch256_batches": SCALE_BATCH256_BATCHES[q]},
        "beauty": data, "users_per_s": users_per_s, "speedup_vs_hf": speedup, "speedup_vs_hf_bf16": speedup_bf16,
        "speedup_vs_hf_best_dtype": speedup_best, "speedup_vs_hf_paper_shape": speedup_paper,
        "speedup_vs_hf_paper_shape_bf16": speedup_paper_bf16, "speedup_vs_hf_paper_shape_best_dtype": speedup_paper_best,
        "validity": validity, "encoder_bound": encoder_bound,
        "beauty_eval_seconds": beauty_eval, "scale": [], "notes": notes,
    }
    if not args.skip_scale:
        print("\n== Scale: trie and beam-20 latency ==")
        result["scale"] = scale(args, rng, q)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
