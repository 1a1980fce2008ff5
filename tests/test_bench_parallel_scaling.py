"""bench/parallel_scaling.py end to end on the tiny model: a single process and a 2-stage pipeline through
torchrun, each row printed, the ratio lines the README quotes last (a merge once pushed final_loss into a
comment and every run died with a KeyError before printing a row)."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finlora_utils import flops, microbatch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_prints_every_row_and_the_pipeline_lines(tmp_path):
    out_json = tmp_path / "scaling.json"
    cmd = [sys.executable, str(ROOT / "bench" / "parallel_scaling.py"), "--model", "tiny-random-llama",
           "--modes", "none,pipeline", "--steps", "2", "--batch-size", "4",
           "--max-seq-len", "64", "--timeout", "300", "--json", str(out_json)]   # the kit chooses the micro-batches
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = run.stdout
    rows = [ln for ln in out.splitlines() if re.match(r"(single/\d+t|pipe x2)\s+\d", ln)]
    assert [r.split()[0].split("/")[0] for r in rows] == ["single", "pipe"], out
    assert len(re.findall(r"\d+\.\d\d \((-?\d+\.\d\d) \| (\d+\.\d\d)\)", rows[1])) == 2   # one peak per stage
    last = out.strip().splitlines()[-2:]
    # over the steps after the first (a fresh process's warm-up), the whole run's beside it
    assert re.fullmatch(r"pipeline efficiency: \d+\.\d\d \(steps 2-2; whole run \d+\.\d\d\)", last[0]), last
    assert re.fullmatch(r"pipeline x2 per-rank peak / single peak: \d+\.\d\d", last[1]), last
    # the figures are kept with how they were made, and agree with the printed ones
    doc = json.loads(out_json.read_text())
    assert f"results: {out_json} (commit {doc['run_info']['git_commit']})" in out
    assert doc["run_id"] == "parallel_scaling" and doc["run_info"]["config"]["micro_batches"] == 2
    # 2 micro-batches of 2 rows beat 4 of 1 on a CPU, in bf16 and in fp32 alike
    here = "bf16" if flops.compute_dtype("nf4") == torch.bfloat16 else "fp32"
    c = microbatch.choose(4, 2, "1f1b", "cpu", compute=here)
    assert c.micro_batches == doc["run_info"]["config"]["micro_batch_choice"]["micro_batches"] == 2
    assert out.splitlines()[0] == (f"micro-batches: 2, chosen by the kit: predicted pipeline efficiency "
                                   f"{c.efficiency:.2f} (2: {c.table[0][1]:.2f}, 4: {c.table[1][1]:.2f})"), out[:500]
    assert re.search(rf"^micro-batches chosen by the kit: 2 \(predicted pipeline efficiency {c.efficiency:.2f}, "
                     r"measured \d\.\d\d\)$", out, re.M), out
    assert doc["meta_info"]["base_model"]["name"] == "tiny-random-llama" and doc["run_info"]["data_files"]
    assert [r["mode"] for r in doc["rows"]] == ["single/1t", "pipe x2"] and len(doc["rows"][1]["planned_peaks"]) == 2
    assert f"{doc['figures']['pipeline_efficiency']:.2f}" == last[0].split(": ")[1].split()[0]
    assert f"whole run {doc['figures']['pipeline_efficiency_whole_run']:.2f})" in last[0]
    single, pipe = doc["rows"]
    assert pipe["steady_tokens_per_s"] / single["steady_tokens_per_s"] / 2 == pytest.approx(
        doc["figures"]["pipeline_efficiency"])
    assert [len(r["repeats"]) for r in doc["rows"]] == [1, 1]
    assert doc["figures"]["pipeline_bubble"] == pytest.approx(1 / 3)


def test_bench_names_a_bad_argument():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "parallel_scaling.py"), "--nproc", "0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 2 and "--nproc=0: expected an integer >= 2" in run.stderr, run.stderr[-2000:]


def _bench():
    spec = importlib.util.spec_from_file_location("parallel_scaling", ROOT / "bench" / "parallel_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_steady_figures_leave_out_the_first_step_and_the_fastest_repeat_counts():
    bench = _bench()
    ti = dict(steps=4, wall_s=10.0, nonpad_tokens=400, tokens_per_s=40.0,
              first_step=dict(step=1, wall_s=4.0, nonpad_tokens=100))
    got = bench.steady(ti)
    assert got == dict(steady_step_s=2.0, steady_tokens_per_s=50.0)   # 300 tokens in the last 6 s
    assert bench.steady(dict(ti, steps=1)) == dict(steady_step_s=None, steady_tokens_per_s=None)
    slow, fast = dict(tokens_per_s=40.0, steady_tokens_per_s=50.0, peaks=[1]), \
        dict(tokens_per_s=30.0, steady_tokens_per_s=60.0, peaks=[2])
    best = bench.fastest([slow, fast])
    assert best["peaks"] == [2] and [r["steady_tokens_per_s"] for r in best["repeats"]] == [50.0, 60.0]
    assert [r["tokens_per_s"] for r in best["repeats"]] == [40.0, 30.0]   # each repeat's whole run beside it
    one_step = dict(tokens_per_s=30.0, steady_tokens_per_s=None, peaks=[3])
    assert bench.speed(one_step) == 30.0 and bench.speed(fast, whole=True) == 30.0
