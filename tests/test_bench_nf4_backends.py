"""bench/nf4_backends.py end to end at a small size: every installed backend timed with its error against
the unquantized layer in the kit's compute dtype (or the one asked for), a missing one named with the command
that installs it (never timed as zero), the ratio line last."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dtype", ["auto", "fp32"])
def test_bench_times_bitsandbytes_and_names_missing_backends(tmp_path, dtype):
    from finlora_utils.hardware import cpu_bf16_native

    plain = "fp32" if dtype == "fp32" or not cpu_bf16_native() else "bf16"   # auto: the kit's dtype for 4-bit
    out_json = tmp_path / "nf4.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "nf4_backends.py"), "--rows", "16", "--calls", "1",
                          "--dtype", dtype, "--json", str(out_json)], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout.strip().splitlines()
    rows = [ln for ln in out if re.match(r"(q|k|gate|down)_proj ", ln)]
    assert len(rows) == 4 and all(f": {plain} " in r and "bitsandbytes" in r for r in rows), out
    assert f"16 rows, {plain}; " in run.stdout
    # the 4-bit grid's error is NF4's (~9 % relative on a normal weight), not a broken or unquantized layer
    errs = [float(e) for r in rows for e in re.findall(r"bitsandbytes \d+\.\d+ \((\d\.\d+)\)", r)]
    assert len(errs) == 4 and all(0.05 < e < 0.15 for e in errs), rows
    for name in ("torchao", "quanto"):   # not in requirements.txt: measured when installed, else said so
        assert any(name in r for r in rows) or any(ln.startswith(f"{name}: not installed: ") and "pip install" in ln
                                                   for ln in out), out
    assert re.fullmatch(rf"4-bit layer time / {plain}: bitsandbytes \d+\.\d\dx(, \w+ \d+\.\d\dx)*", out[-1]), out[-1]
    doc = json.loads(out_json.read_text())   # the figures with the backends' versions, commit and machine
    assert out[-2] == f"results: {out_json} (commit {doc['run_info']['git_commit']})"
    assert doc["backends"]["bitsandbytes"].startswith("bitsandbytes 0.") and len(doc["shapes"]) == 4
    assert doc["plain"] == doc["run_info"]["config"]["compute_dtype"] == plain
    assert f"bitsandbytes {doc['time_vs_plain']['bitsandbytes']:.2f}x" in out[-1]
    assert doc["shapes"]["q_proj"]["bitsandbytes"]["relative_error_vs_plain"] == pytest.approx(errs[0], abs=1e-4)


def test_bench_rejects_bad_sizes_by_name():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "nf4_backends.py"), "--rows", "0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 2 and "--rows=0" in run.stderr and "Traceback" not in run.stderr
