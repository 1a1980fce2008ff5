"""What this machine computes natively: the device and whether bf16 is fast here. Imports nothing of the kit,
so every floor above (config's precision resolution, model loading, autocast) asks the same one place."""
from __future__ import annotations

from pathlib import Path

import torch


def cpu_flag(flag: str) -> bool:
    """Whether /proc/cpuinfo lists `flag` (avx512_bf16, amx_bf16, ...); False where it cannot be read."""
    try:
        return flag in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def default_compute_dtype() -> torch.dtype:
    """bf16 where the hardware computes it natively (CUDA Ampere+, AVX-512-BF16/AMX CPUs), else fp32."""
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_flag("avx512_bf16") or cpu_flag("amx_bf16") else torch.float32
