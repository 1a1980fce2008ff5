"""bench/memory_at_scale.py end to end on the tiny shipped config: four precisions, each measured in its own
process, the planner beside each row, the two summary lines last, a results JSON without absolute paths."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_measures_every_precision_and_prints_the_two_summary_lines(tmp_path):
    out = tmp_path / "memory_at_scale.json"
    cmd = [sys.executable, str(ROOT / "bench" / "memory_at_scale.py"), "--models", "tiny-random-llama",
           "--seq-len", "16", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-2:]
    assert re.fullmatch(r"4bit/16bit measured peak ratio at TINY-RANDOM-LLAMA: \d+\.\d\d", last[0]), last
    assert re.fullmatch(r"planner max abs error at scale: \d+\.\d%", last[1]), last
    doc = json.loads(out.read_text())
    rows = {r["label"]: r for r in doc["rows"]}
    assert set(rows) == {"16-bit", "8-bit", "4-bit", "4-bit dq"}
    # (no ordering of weight bytes here: the tiny model is mostly its unquantized embedding matrix)
    assert all(r["weight_bytes"] > 0 and r["trainable_params"] > 0 for r in rows.values())
    for r in rows.values():
        assert r["process_peak_bytes"] >= r["peak_bytes"] > r["before_bytes"] > r["baseline_bytes"] > 0
        assert r["above_process_bytes"] > r["above_loaded_bytes"] > 0 and r["predicted_bytes"] > 0
    assert doc["sixteen_bit_precision"] in ("bf16", "fp32") and "random init" in doc["meta_info"]["base_model"]["source"]
    assert str(ROOT) not in out.read_text() and str(tmp_path) not in out.read_text()   # no absolute paths
