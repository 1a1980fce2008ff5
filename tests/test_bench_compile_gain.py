"""bench/compile_gain.py end to end on the tiny model with dynamo's eager backend (it traces and compiles the
layers' graphs without generating kernels, so the bench's whole path runs in seconds)."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "compile_gain.py"


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def _bench():
    spec = importlib.util.spec_from_file_location("compile_gain", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pays_after_is_the_compile_time_over_the_time_saved_per_step():
    pays_after = _bench().pays_after
    assert pays_after(10.0, 1.0, 0.5) == 21.0        # the first step, then 20 steps of 0.5 s saved
    assert pays_after(10.0, 0.01, 0.005, 200) == 2200.0   # a first call of 200 prompts, then 2,000 more
    assert pays_after(10.0, 0.5, 0.5) is None and pays_after(10.0, 0.5, 0.6) is None   # no gain: never
    assert pays_after(-1.0, 1.0, 0.5) == 1.0   # compiled was not slower to start: pays with its first step


@pytest.mark.slow
def test_bench_trains_and_scores_eager_and_compiled_and_ends_with_the_ratios(tmp_path):
    out_json = tmp_path / "compile.json"
    run = _run("--model", "tiny-random-llama", "--steps", "3", "--batch", "2", "--n", "8", "--dropouts", "0",
               "--backend", "eager", "--json", str(out_json))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("machine: ") and "backend eager" in lines[0]
    assert re.fullmatch(r"compile vs eager, train dropout 0: \d+\.\d\dx per step, first step [+-]\d+\.\d s, "
                        r"pays after (never|[\d,]+ steps)", lines[-2]), lines[-2]
    assert re.fullmatch(r"compile vs eager, score: \d+\.\d\dx per prompt, first call [+-]\d+\.\d s, "
                        r"pays after (never|[\d,]+ prompts)", lines[-1]), lines[-1]
    doc = json.loads(out_json.read_text())
    assert lines[-3] == f"results: {out_json} (commit {doc['run_info']['git_commit']})"
    train = doc["train"]["0.0"]
    assert len(train["eager"]["step_s"]) == len(train["compiled"]["step_s"]) == 3
    assert len(train["eager"]["losses"]) == 3
    # dynamo's eager backend runs the same kernels: the compiled run must train to the same losses
    assert train["max_loss_difference"] <= 1e-5, train
    assert f"{train['ratio']:.2f}x per step" in lines[-2]
    # the compiled runs compiled something; the eager ones nothing
    assert train["compiled"]["graphs"] > 0 and train["eager"]["graphs"] == 0, train
    score = doc["score"]
    assert score["eager"]["prompts"] == 8 and score["same_predictions"] == 8
    assert score["compiled"]["graphs"] > 0 and score["eager"]["graphs"] == 0, score
    assert score["eager"]["prepacked_layers"] == 0 and "too few" in score["eager"]["plain_layout_why"]
    assert f"{score['ratio']:.2f}x per prompt" in lines[-1]
    assert doc["run_info"]["config"]["compile_cache"].startswith("cold")
    assert doc["meta_info"]["base_model"] and doc["run_info"]["data_files"]["test"]


def test_bench_names_a_bad_argument():
    run = _run("--dropouts", "a,b")
    assert run.returncode == 2 and "--dropouts='a,b': expected comma-separated numbers in [0, 1)" in run.stderr
    run = _run("--steps", "2")
    assert run.returncode == 2 and "--steps=2: expected an integer >= 3" in run.stderr
    run = _run("--task", "nope")
    assert run.returncode == 2 and "--task: " in run.stderr and "nope" in run.stderr
    assert "Traceback" not in run.stderr
