"""bench/linear_kernels.py end to end on the tiny model's shapes: every kernel timed, one summary line per dtype."""
from __future__ import annotations

import json
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


def test_bench_times_each_kernel_per_shape_and_ends_with_the_ratios(tmp_path):
    out_json = tmp_path / "kernels.json"
    run = _run("--model", "tiny-random-llama", "--min-time", "0.005", "--repeats", "1", "--weights", "2",
               "--json", str(out_json))
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
    # every rate kept with how it was made; the printed ratios are the file's
    doc = json.loads(out_json.read_text())
    assert f"results: {out_json} (commit {doc['run_info']['git_commit']})" == lines[-len(measured) - 1]
    assert sorted(doc["dtypes"]) == sorted(measured) and doc["run_info"]["config"]["shapes_of"] == "tiny-random-llama"
    for name, ln in zip(measured, tail):
        got = doc["dtypes"][name]
        assert len(got["shapes"]) == 4 and all(v > 0 for s in got["shapes"].values() for v in s["flop_per_s"].values())
        assert f"forward {got['onednn_vs_torch']['forward']:.2f}x" in ln


def test_bench_names_a_bad_argument():
    run = _run("--dtypes", "fp16")
    assert run.returncode == 2 and "--dtypes='fp16': expected a comma-separated list of fp32, bf16" in run.stderr
    run = _run("--rows", "0")
    assert run.returncode == 2 and "--rows=0: expected an integer >= 1" in run.stderr
    assert "Traceback" not in run.stderr
