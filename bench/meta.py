"""What every benchmark records beside its numbers: the machine (CPU model and the flags that decide its fast
paths, cores, memory) and the versions (Python, torch, numpy, genrec and its commit, whether the tree differed)."""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
from pathlib import Path

import torch

import genrec

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")


def _field(path: str, key: str) -> str:
    lines = Path(path).read_text().splitlines() if Path(path).exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), "")


def machine() -> dict:
    flags = set(_field("/proc/cpuinfo", "flags").split())
    mem_kb = int((_field("/proc/meminfo", "MemTotal").split() or ["0"])[0])
    return {"cpu": _field("/proc/cpuinfo", "model name") or platform.processor(),
            "cpu_flags": [f for f in FLAGS if f in flags], "cores": len(os.sched_getaffinity(0)),
            "memory_mb": mem_kb // 1024, "torch_threads": torch.get_num_threads(), "platform": platform.platform()}


def versions(*packages: str) -> dict:
    """Versions, plus the commit and whether tracked files differ from it (results under bench/results aside,
    since a benchmark may have written them in this tree)."""
    git = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": importlib.import_module("numpy").__version__,
           "genrec": genrec.__version__, "genrec_commit": git("rev-parse", "HEAD"), "tree_modified": bool(dirty)}
    for name in packages:
        out[name] = importlib.import_module(name).__version__
    return out
