"""Mixed precision: the autocast context of a training step or an inference pass, and a warning
where bf16 is asked for on a CPU without native bf16 instructions (there it runs emulated and is
several times slower than fp32: docs/PERFORMANCE.md)."""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path

import torch

from bench.errors import BenchError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags in /proc/cpuinfo


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """True/False from the CPU flags; None where they cannot be read (not Linux/x86)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return any(f in flags for f in NATIVE_BF16_FLAGS)


@functools.cache
def warn_emulated_bf16() -> None:
    if cpu_has_native_bf16() is False:
        warnings.warn("bf16 on this CPU: no avx512_bf16/amx_bf16 instructions, so bf16 is emulated and slower "
                      "than fp32 (6x per training step on an AVX2-only CPU); use fp32 here", stacklevel=3)


def autocast(device: torch.device, precision: str, inference: bool = False):
    """``precision``: fp32 (or ``none``), bf16 or fp16. fp16 inference on the CPU is refused."""
    if precision == "none":
        precision = "fp32"
    if precision not in PRECISIONS:
        raise BenchError(f"unknown precision '{precision}'; use fp32, bf16 or fp16")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if device.type == "cpu":
        if dtype == torch.float16 and inference:
            raise BenchError("fp16 inference needs a CUDA GPU; use bf16 on the CPU")
        if dtype == torch.bfloat16:
            warn_emulated_bf16()
    return torch.autocast(device_type=device.type, dtype=dtype)
