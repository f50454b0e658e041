"""Where numbers come from: the machine (CPU model and the flags that decide its fast paths, cores, memory) and
the versions (Python, torch, numpy, genrec and its git commit when it runs from a checkout). Every stage records
them in its stamp, and benchmarks beside their results."""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

import genrec

SOURCE = Path(genrec.__file__).resolve().parents[2]  # the checkout, when genrec runs from one
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
LIBRARIES = ("numpy", "pandas", "safetensors", "sentence_transformers", "transformers")


def _field(path: str, key: str) -> str:
    lines = Path(path).read_text().splitlines() if Path(path).exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), "")


def machine() -> dict[str, Any]:
    flags = set(_field("/proc/cpuinfo", "flags").split())
    mem_kb = int((_field("/proc/meminfo", "MemTotal").split() or ["0"])[0])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _field("/proc/cpuinfo", "model name") or platform.processor(),
            "cpu_flags": [f for f in FLAGS if f in flags], "cores": len(os.sched_getaffinity(0)),
            "memory_mb": mem_kb // 1024, "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "platform": platform.platform()}


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=SOURCE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@lru_cache(maxsize=1)
def source_commit() -> tuple[str | None, bool]:
    """(the commit genrec runs from, whether tracked files differ from it; results under bench/results aside),
    or (None, False) outside a git checkout."""
    if not (SOURCE / ".git").exists():
        return None, False
    commit = _git("rev-parse", "HEAD") or None
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    return commit, bool(dirty)


def versions(*packages: str) -> dict[str, Any]:
    """Python, torch, genrec (with its commit) and the libraries that shape the numbers, plus `packages`."""
    commit, dirty = source_commit()
    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "genrec": genrec.__version__,
                           "genrec_commit": commit, "tree_modified": dirty}
    for name in (*LIBRARIES, *packages):
        try:
            out[name] = importlib.import_module(name).__version__
        except ImportError:
            continue
    return out
