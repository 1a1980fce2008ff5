"""bench/eval_speed.py end to end on the tiny model: every mode timed, score with and without prepacked
weights giving the same predictions, and the two lines the README quotes last."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "eval_speed.py"


@pytest.mark.slow
def test_bench_compares_layouts_and_prints_the_speedup_and_mfu_last(tmp_path):
    # batch 1 so the 16 prompts make the 16 forwards that repay prepacking (prepack.MIN_FORWARDS)
    cmd = [sys.executable, str(BENCH), "--model", "tiny-random-llama", "--n", "16", "--batch-size", "1",
           "--precision", "fp32", "--max-new-tokens", "4", "--json", str(tmp_path / "eval_speed.json")]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = run.stdout
    layout = re.search(r"(\d+) linear layers' weights laid out once for oneDNN .*; score with them [\d.]+ s, with the "
                       r"plain layout [\d.]+ s \([\d.]+x\); predictions identical: (\d+)/(\d+)", out)
    assert layout, out
    assert int(layout[1]) > 0 and layout[2] == layout[3] == "16", out
    assert re.search(r"seconds per repeat: generate [\d.]+; plain [\d.]+; shared [\d.]+; unpacked [\d.]+", out), out
    speedup, mfu = out.strip().splitlines()[-2:]
    assert re.fullmatch(r"score speedup vs generate: \d+\.\d\dx \(this machine allows about \d+\.\dx\)", speedup), out
    assert re.fullmatch(r"score MFU: \d+\.\d %", mfu), mfu
    # the figures are kept with how they were made (commit, machine, config, data and model provenance)
    doc = json.loads((tmp_path / "eval_speed.json").read_text())
    assert f"{doc['figures']['score_speedup']:.2f}x" in speedup and doc["run_info"]["config"]["n"] == 16
    assert doc["figures"]["identical_with_plain_layout"] == int(layout[2])   # the printed agreement is kept too
    assert doc["meta_info"]["hardware"]["cpu"] and doc["meta_info"]["base_model"]["name"] == "tiny-random-llama"
    assert doc["run_info"]["git_commit"] and doc["run_info"]["data_files"] and doc["peak"]["peak"] > 0


def test_bench_names_a_bad_argument():   # one case: each run pays the imports (the checks share one code path)
    run = subprocess.run([sys.executable, str(BENCH), "--task", "nosuch"], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert run.returncode == 2 and "--task: unknown task 'nosuch'" in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
