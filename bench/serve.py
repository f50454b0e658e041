"""Load test of `genrec serve` on loopback: requests per second and latency percentiles at several concurrencies
and beam widths, with dynamic batching on and off, side by side in one run.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000 \
        python bench/serve.py [--run runs/bench-beauty] [--concurrency 1 8 32 128] [--beams 20 100] [-k 10]
                              [--seconds 15] [--max-requests 2000] [--warm-up 2] [--out bench/results/serve.json]
                              [--threads N] [--dtype auto] [--unbatched-dtype float32] [--max-batch 64]
                              [--max-wait-ms 5]

A fresh `genrec serve` process (a real uvicorn server) is started on the run with batching on, then one with it
off, each with the service's defaults unless given. Each setting is first warmed up with `--warm-up` seconds of
uncounted load (a long-running service is measured, not its first seconds), then `concurrency` clients each
send POST /recommend one after another, with histories of the run's test users (their whole sequence but the last
item), k items from a beam of `beam_size`, history removed, until `--max-requests` answers or `--seconds` have passed. The clients run in this process (one asyncio loop, one
keep-alive HTTP/1.1 connection each over plain asyncio streams, so that the load generator costs little) and the
server in its own, so on 2 cores the two compete for the CPU as a service and its callers on one machine would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from meta import machine, versions

from genrec.data.prepare import load_prepared
from genrec.rundir import RunDir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run: Path, batched: bool, threads: int, max_batch: int, max_wait_ms: float, dtype: str
          ) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "genrec.cli", "serve", str(run), "--port", str(port), "--max-batch", str(max_batch),
           "--max-wait-ms", str(max_wait_ms), "--dtype", dtype]
    cmd += [] if batched else ["--no-batching"]
    cmd += ["--threads", str(threads)] if threads else []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"genrec serve {run} exited with {proc.returncode}")
            time.sleep(0.1)
    sys.exit("genrec serve did not answer within 60 s")


class Connection:
    """One keep-alive HTTP/1.1 connection over asyncio streams: a load generator's client must cost far less than
    the server it measures (httpx's pool costs more per request as connections grow, which at 128 starved the
    server of requests)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, body: dict) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await self.writer.drain()
        assert self.reader is not None
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        length = next(int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:"))
        return status, json.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(url: str, histories: list[list[str]], *, concurrency: int, beam: int, k: int, seconds: float,
               max_requests: int, warm_up: float = 2.0) -> dict:
    latencies: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}
    rng = random.Random(0)
    host, port = url.split("//")[1].split(":")
    connections = [Connection(host, int(port)) for _ in range(concurrency)]

    async def one(conn: Connection, history: list[str]) -> None:
        nonlocal errors
        start = time.perf_counter()
        try:
            status, body = await conn.post_json("/recommend", {"history": history, "k": k, "beam_size": beam})
        except (OSError, asyncio.IncompleteReadError, ValueError) as err:  # counted, with its kind, not hidden
            errors += 1
            kinds[type(err).__name__] = kinds.get(type(err).__name__, 0) + 1
            conn.close()
            conn.writer = None
            return
        if status == 200 and len(body["items"]) == k:
            latencies.append(time.perf_counter() - start)
        else:
            errors += 1

    sent = 0

    async def worker(conn: Connection, stop_at: float, most: int) -> None:
        nonlocal sent
        while sent < most and time.perf_counter() < stop_at:
            sent += 1
            await one(conn, rng.choice(histories))

    # warm-up, not counted: the service at this load for a while (under bf16 each new batch shape is prepared once)
    await asyncio.gather(*(worker(c, time.perf_counter() + warm_up, 10**9) for c in connections))
    latencies.clear()
    errors, sent = 0, 0
    kinds.clear()
    began = time.perf_counter()
    await asyncio.gather(*(worker(c, began + seconds, max_requests) for c in connections))
    elapsed = time.perf_counter() - began
    for c in connections:
        c.close()
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "error_kinds": kinds, "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) if len(ms) else None for q in (50, 95, 99)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/bench-beauty", help="a trained run directory")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--beams", type=int, nargs="+", default=[20, 100])
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--seconds", type=float, default=15.0, help="time per setting at most")
    p.add_argument("--max-requests", type=int, default=2000, help="answers per setting at most")
    p.add_argument("--warm-up", type=float, default=2.0, help="seconds of uncounted load before each setting")
    p.add_argument("--threads", type=int, default=0, help="the server's torch threads (default: the server's)")
    p.add_argument("--max-batch", type=int, default=64, help="the server's histories per model call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's longest wait for a batch to fill")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="the batched server's")
    p.add_argument("--unbatched-dtype", default="float32", choices=("auto", "float32", "bfloat16"),
                   help="the unbatched server's (default float32: one history at a time is fastest in float32, and "
                        "batching is compared with the unbatched service at its best)")
    p.add_argument("--out", default="bench/results/serve.json")
    args = p.parse_args()
    run = Path(args.run)
    dataset = load_prepared(RunDir(run).prepared)
    histories = [[dataset.item_ids[i] for i in seq[:-1].tolist()] for seq in dataset.sequences if len(seq) >= 3]
    rows, servers = [], {}
    print(f"{'batched':<9}{'beam':>6}{'conc.':>7}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for batched in (True, False):
        proc, url = start(run, batched, args.threads, args.max_batch, args.max_wait_ms,
                          args.dtype if batched else args.unbatched_dtype)
        health = json.load(urllib.request.urlopen(url + "/health", timeout=10))
        servers["batched" if batched else "unbatched"] = {key: health[key] for key in ("dtype", "threads", "batching")}
        try:
            for beam in args.beams:
                for concurrency in args.concurrency:
                    r = asyncio.run(load(url, histories, concurrency=concurrency, beam=beam, k=args.k,
                                         seconds=args.seconds, max_requests=args.max_requests, warm_up=args.warm_up))
                    row = {"batched": batched, "beam_size": beam, "k": args.k, "concurrency": concurrency, **r}
                    rows.append(row)
                    print(f"{str(batched):<9}{beam:>6}{concurrency:>7}{r['requests_per_s']:>9}{r['p50_ms']:>9}"
                          f"{r['p95_ms']:>9}{r['p99_ms']:>9}{r['errors']:>8} {r['error_kinds'] or ''}", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    ratios = {}
    for beam in args.beams:
        for c in args.concurrency:
            on = next(r for r in rows if r["batched"] and r["beam_size"] == beam and r["concurrency"] == c)
            off = next(r for r in rows if not r["batched"] and r["beam_size"] == beam and r["concurrency"] == c)
            ratios[f"beam{beam}/concurrency{c}"] = round(on["requests_per_s"] / max(off["requests_per_s"], 1e-9), 2)
    print("requests per second, batched / unbatched:", ratios)
    out = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
           "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "machine": machine(), "versions": versions(),
           "run": str(run), "servers": servers, "rows": rows, "batched_over_unbatched": ratios}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
