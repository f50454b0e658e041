"""Number formats for running a model: `float32`, or `bfloat16` under autocast (matrix products in bf16,
log-softmax and score sums in float32), and `auto`, which picks bf16 only where the hardware computes it natively
(emulated bf16 is slower than float32)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(dtype: str, device_type: str) -> str:
    """"auto" -> "bfloat16" where the hardware computes it natively (avx512_bf16 / amx_bf16 CPUs, GPUs that
    support it), else "float32"; other values pass through."""
    if dtype != "auto":
        return dtype
    if device_type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"


def autocast(dtype: str, device_type: str) -> AbstractContextManager:
    """The context a model runs in for `dtype` ("auto" resolved here)."""
    if resolve_dtype(dtype, device_type) == "bfloat16":
        return torch.autocast("cpu" if device_type == "cpu" else "cuda", dtype=torch.bfloat16)
    return nullcontext()
