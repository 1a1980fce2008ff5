"""bench/linear_kernels.py end to end on the tiny model's shapes: every kernel timed, one summary line per dtype."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

from finlora_utils import prepack

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "linear_kernels.py"


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_bench_times_each_kernel_per_shape_and_ends_with_the_ratios():
    run = _run("--model", "tiny-random-llama", "--min-time", "0.005", "--repeats", "1", "--weights", "2")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("machine: ") and "torch CPU capability" in lines[0]
    rows = [ln for ln in lines if re.match(r"\w+_proj\s+\d+x\d+x\d+ ", ln)]
    measured = ["fp32"] + (["bf16"] if prepack.supported(torch.bfloat16)[0] else [])
    assert len(rows) == 4 * len(measured), run.stdout        # q, k, gate, down per dtype
    for ln in rows:
        rates = [float(x) for x in ln.replace("|", " ").split()[2:]]
        assert len(rates) == 5 and all(r > 0 for r in rates), ln
    tail = lines[-len(measured):]
    for name, ln in zip(measured, tail):
        assert re.fullmatch(rf"onednn vs torch, {name}: forward \d+\.\d\dx \(prepacked \d+\.\d\dx\), "
                            rf"input gradient \d+\.\d\dx", ln), ln


def test_bench_names_a_bad_argument():
    run = _run("--dtypes", "fp16")
    assert run.returncode == 2 and "--dtypes='fp16': expected a comma-separated list of fp32, bf16" in run.stderr
    run = _run("--rows", "0")
    assert run.returncode == 2 and "--rows=0: expected an integer >= 1" in run.stderr
    assert "Traceback" not in run.stderr
