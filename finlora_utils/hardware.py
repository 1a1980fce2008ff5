"""What this machine computes natively: the device and whether bf16 is fast here. Imports nothing of the kit
(and torch only when asked for a dtype, so the planner stays torch-free), so every floor above (config's
precision resolution, model loading, autocast, the memory planner) asks the same one place."""
from __future__ import annotations

import os
from pathlib import Path

# oneDNN ISA caps without AVX512_CORE_BF16's instructions: with one of these set, oneDNN runs a bf16 matmul without
# them (measured on a Zen 4 EPYC, 2 threads: ONEDNN_MAX_CPU_ISA=AVX2 0.4-1.8 GFLOP/s, as the AVX2-only
# EPYC's ~1; AVX512_CORE 74-76; uncapped 367-385), so the kit must compute in fp32 there as on such a CPU
NO_BF16_ISAS = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})
# recorded with every result, since each one changes what the same CPU computes how fast
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def cpu_flag(flag: str) -> bool:
    """Whether /proc/cpuinfo lists `flag` (avx512_bf16, amx_bf16, ...); False where it cannot be read."""
    try:
        return flag in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def isa_caps() -> dict:
    """The instruction-set caps this process runs under (empty when none is set): a result made on a Zen 4 capped
    at AVX2 must not read as a Zen 4 figure."""
    return {k: os.environ[k] for k in ISA_CAP_VARIABLES if os.environ.get(k)}


def caps_text(caps: dict | None = None) -> str:
    """', ONEDNN_MAX_CPU_ISA=AVX2, ...' for a printed line (this process's caps unless given), '' without any."""
    return "".join(f", {k}={v}" for k, v in (isa_caps() if caps is None else caps).items())


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512-BF16 or AMX) and oneDNN, which runs torch's
    bf16 matmuls, is allowed to use those instructions. oneDNN reads its cap once, at its first use in a process,
    so set it before the process starts (as the README's commands do), not from inside it."""
    # oneDNN compares the value case-insensitively and does not strip it: neither does this
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return (cpu_flag("avx512_bf16") or cpu_flag("amx_bf16")) and cap not in NO_BF16_ISAS


def default_compute_dtype():
    """bf16 where the hardware computes it natively (CUDA Ampere+, AVX-512-BF16/AMX CPUs), else fp16 on a GPU
    and fp32 on a CPU."""
    import torch

    if torch.cuda.is_available():
        return cuda_compute_dtype()
    return torch.bfloat16 if cpu_bf16_native() else torch.float32


def cuda_compute_dtype():
    """bf16 on a GPU that computes it natively (Ampere+), else fp16."""
    import torch

    # torch's default counts emulated bf16 (T4, V100) as supported: those compute fp16 natively
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
