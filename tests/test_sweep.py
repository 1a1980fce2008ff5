"""A 2-seed sweep with the smoke preset: killed after its first point, rerun, failures reported, aggregated."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from finlora_utils import report, results, sweep
from finlora_utils.config import ConfigError

GRID = {
    "name": "t",
    "preset": "smoke",
    "notebooks": ["03_finetune", "05_evaluation"],
    "params": {"TASKS": "fpb", "MAX_TRAIN_SAMPLES": 8, "SWEEP_SEQ_LENS": "", "COMPARE_GENERATE": False,
               "BASE_MODES": "score", "MAX_TEST_SAMPLES": 6},
    "grid": {"CONFIGS": ["nf4:4"], "SEED": [0, 1]},
    # one 16-bit point beside the 4-bit seeds; rank 0: the notebook's config cell must refuse it
    "include": [{"CONFIGS": "bf16:8", "SEED": 0}, {"CONFIGS": "nf4:0", "SEED": 0}],
    "timeout": 600,
}


def test_grid_validation_names_the_problem(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({**GRID, "grid": {"SEED": 3}}))
    with pytest.raises(ConfigError, match=r"grid\.SEED=3: expected a non-empty list"):
        sweep.load_grid(p)
    p.write_text(yaml.safe_dump({**GRID, "gird": {}}))
    with pytest.raises(ConfigError, match="unknown key 'gird'"):
        sweep.load_grid(p)
    assert len(sweep.expand(GRID | {"grid": GRID["grid"], "include": GRID["include"]})) == 4
    for content, message in [("[1, 2]\n", r"g\.yaml: a YAML list, expected a mapping"),
                             (yaml.safe_dump({**GRID, "grid": [1, 2]}), r"grid=\[1, 2\]: expected a mapping"),
                             (yaml.safe_dump({**GRID, "timeout": "abc"}), r"timeout='abc': expected seconds"),
                             (yaml.safe_dump({**GRID, "include": {"SEED": 1}}), r"include=.*: expected a list")]:
        p.write_text(content)
        with pytest.raises(ConfigError, match=message):
            sweep.load_grid(p)
    p.write_bytes(b"name: \xff\n")
    with pytest.raises(ConfigError, match=r"g\.yaml: not UTF-8 text \(byte 0xff"):
        sweep.load_grid(p)


@pytest.mark.slow
def test_sweep_resumes_skips_finished_points_and_reports_failures(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "finlora_utils.sweep", str(grid), "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "points" / sweep.point_id({"CONFIGS": "nf4:4", "SEED": 0}) / "DONE.json"
    deadline = time.time() + 400
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)   # killed mid-sweep, as a user's Ctrl-C or a lost machine would
    proc.wait()
    assert first.exists(), "the first point never finished"
    made = json.loads(first.read_text())   # a point says which code ran it, read when it started
    assert made["git_commit"] == results.git_commit() and made["started"] <= made["finished"]
    stamp = first.stat().st_mtime_ns
    assert len(list((out / "points").glob("*/DONE.json"))) == 1

    outcomes, index = sweep.run_sweep(grid, out)
    assert "[sweep] point 4/4" in (out / "sweep.log").read_text()   # the terminal's lines, kept beside the points
    status = {sweep.point_id(o["point"]): o for o in outcomes}
    assert status[first.parent.name]["status"] == "skipped" and first.stat().st_mtime_ns == stamp
    assert sorted(o["status"] for o in outcomes) == ["done", "done", "failed", "skipped"]
    failed = status[sweep.point_id({"CONFIGS": "nf4:0", "SEED": 0})]
    assert failed["notebook"] == "03_finetune"
    assert "03_finetune.ipynb failed in cell" in failed["error"] and "rank" in failed["error"]
    assert not (out / "points" / sweep.point_id({"CONFIGS": "nf4:0", "SEED": 0}) / "DONE.json").exists()

    agg = sweep.aggregate(out)
    table = sweep.paper_layout(agg)
    assert list(table.index) == ["fpb"]
    assert list(table.columns) == ["base", "16-bit r8", "4-bit r4", "test n", "majority", "truncated (train / test)",
                                   "note"]
    assert agg.set_index("config").loc["4-bit r4", "n"] == 2      # two seeds averaged
    assert "±" in table.loc["fpb", "4-bit r4"]
    html = index.read_text()
    assert "Failed points" in html and "03_finetune" in html


def test_an_include_point_may_run_only_some_notebooks(tmp_path, monkeypatch):
    """Zero-shot-only tasks (nwgi, the XBRL test sets) have no train split: their point skips 03_finetune."""
    calls = []
    monkeypatch.setattr(sweep, "run_notebook", lambda nb, preset, pdir, timeout=None, extra_params=None, **_:
                        calls.append((nb, dict(extra_params))))
    spec = {**GRID, "include": [{"TASKS": "nwgi", "SEED": 0, "notebooks": ["05_evaluation"]}]}
    out = sweep.run_point(spec, spec["include"][0], tmp_path)
    assert out["status"] == "done" and [nb for nb, _ in calls] == ["05_evaluation"]
    assert calls[0][1]["TASKS"] == "nwgi" and "notebooks" not in calls[0][1]   # not a notebook parameter
    calls.clear()
    sweep.run_point(spec, {"CONFIGS": "nf4:4", "SEED": 0}, tmp_path)
    assert [nb for nb, _ in calls] == ["03_finetune", "05_evaluation"]
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({**GRID, "include": [{"TASKS": "nwgi", "notebooks": []}]}))
    with pytest.raises(ConfigError, match=r"include\[0\]=.*optional non-empty list `notebooks`"):
        sweep.load_grid(p)
    # a notebook named by its file is the same notebook (it was looked up as 05_evaluation.ipynb.ipynb)
    p.write_text(yaml.safe_dump({**GRID, "notebooks": ["03_finetune.ipynb", "05_evaluation"],
                                 "include": [{"TASKS": "nwgi", "notebooks": ["05_evaluation.ipynb"]}]}))
    spec = sweep.load_grid(p)
    assert spec["notebooks"] == ["03_finetune", "05_evaluation"] and spec["include"][0]["notebooks"] == ["05_evaluation"]
    p.write_text(yaml.safe_dump({**GRID, "notebooks": ["03_finetune", 5]}))
    with pytest.raises(ConfigError, match=r"notebooks=\['03_finetune', 5\]: expected a list of notebook names"):
        sweep.load_grid(p)


def _result(run_id, tasks, precision, rank, evals, seed=0, trained=True, truncated=None):
    from finlora_utils.results import new_result

    cfg = {"model": "embedded", "tasks": list(tasks), "precision": precision}
    if trained:
        cfg["lora"] = {"rank": rank, "variant": "lora"}
    r = new_result(run_id, cfg, seed)
    if trained:
        r["train_info"] = {"wall_s": 1.0, "truncated": truncated or {}}
    for task, (acc, f1, mode) in evals.items():
        r["eval_info"][task] = {"task": task, "kind": "classification", "mode": mode, "n": 50, "accuracy": acc,
                                "f1_weighted": f1, "pred_distribution": {"neutral": 50}, "majority_baseline": 0.6,
                                "majority_f1_weighted": 0.45, "truncated": 0}
    return r


def _point(root, point, results):
    from finlora_utils.results import write_json

    pdir = root / "points" / sweep.point_id(point)
    for r in results:
        write_json(pdir / "results" / f"{r['run_id']}.json", r)
    write_json(pdir / "DONE.json", {"point": point, "notebooks": ["03_finetune", "05_evaluation"], "wall_s": 60})


def test_aggregate_keeps_multitask_adapters_apart_and_counts_a_repeated_base_once(tmp_path):
    """The cpu-table layout: single-task points, a multi-task point over the same tasks, a zero-shot-only point."""
    base_fpb = _result("fpb_base", ["fpb"], "fp32", None, {"fpb": (0.13, 0.05, "score")}, trained=False)
    base_fpb["eval_info"]["fpb"]["modes"] = {"score": dict(base_fpb["eval_info"]["fpb"]),
                                             "calibrated": dict(base_fpb["eval_info"]["fpb"], mode="calibrated",
                                                                accuracy=0.19)}
    base_fiqa = _result("fiqa_base", ["fiqa"], "fp32", None, {"fiqa": (0.20, 0.10, "score")}, trained=False)
    int8 = _result("fpb_8bit_r8", ["fpb"], "int8", 8, {"fpb": (0.72, 0.71, "score")})
    int8["train_info"].update(peak_mem_bytes=2 ** 30, peak_mem_method="vmhwm",   # which peak: shown beside it
                              peak_mem_definition="training phase: high-water mark during the training loop")
    _point(tmp_path, {"TASKS": "fpb", "SEED": 0}, [
        base_fpb, _result("fpb_4bit_r4", ["fpb"], "nf4", 4, {"fpb": (0.70, 0.68, "score")}, truncated={"fpb": 2}),
        int8])
    _point(tmp_path, {"TASKS": "fpb,fiqa", "SEED": 0}, [
        base_fpb, base_fiqa,
        # a multi-task adapter scored on both of its tasks and - by 05 - on nothing else
        _result("fpb_fiqa_4bit_r4", ["fpb", "fiqa"], "nf4", 4, {"fpb": (0.75, 0.74, "score"),
                                                                  "fiqa": (0.60, 0.58, "score")})])
    _point(tmp_path, {"TASKS": "nwgi", "SEED": 0, "MAX_TEST_SAMPLES": 5, "notebooks": ["05_evaluation"]}, [
        _result("nwgi_base", ["nwgi"], "fp32", None, {"nwgi": (0.30, 0.20, "score")}, trained=False)])

    agg = sweep.aggregate(tmp_path)
    cell = agg.set_index(["task", "config"])
    assert cell.loc[("fpb", "4-bit r4"), "accuracy_mean"] == 0.70              # not averaged with the mix
    assert cell.loc[("fpb", "4-bit r4 multi-task"), "accuracy_mean"] == 0.75
    assert cell.loc[("fpb", "base"), "n"] == 1                                 # evaluated by two points, once
    assert cell.loc[("fpb", "base calibrated"), "accuracy_mean"] == 0.19
    assert cell.loc[("fpb", "4-bit r4"), "train_truncated"] == 2
    table = sweep.paper_layout(agg)
    assert list(table.index) == ["fiqa", "fpb", "nwgi"]
    assert list(table.columns[:5]) == ["base", "base calibrated", "8-bit r8", "4-bit r4", "4-bit r4 multi-task"]
    assert table.loc["fpb", "4-bit r4"] == "0.700 / 0.680" and table.loc["fiqa", "8-bit r8"] == ""
    assert table.loc["nwgi", "note"] == "zero-shot only: no train split available"
    assert table.loc["nwgi", "base"] == "0.300 / 0.200"       # a setting only its own point has: no extra column
    assert table.loc["fpb", "majority"] == "0.600 / 0.450" and table.loc["fpb", "test n"] == 50
    cost = sweep.cost_layout(agg)
    assert list(cost.columns) == ["8-bit r8", "4-bit r4", "4-bit r4 multi-task"] and "base" not in cost.columns
    assert cost.loc["fpb", "4-bit r4"] == "1 s / ? GiB" and cost.loc["fiqa", "8-bit r8"] == ""
    assert cost.loc["fpb", "8-bit r8"] == f"1 s / 1.00 GiB (training phase; {report.machine(int8)})"
    assert report.machine(int8) and "(R)" not in report.machine(int8)
    pngs = sweep.accuracy_figure(agg, tmp_path / "figures")
    assert [p.name for p in pngs] == ["sweep_accuracy.png", "sweep_f1_weighted.png"]
    assert (tmp_path / "figures" / "sweep_accuracy.csv").read_text().count("\n") == len(agg) + 1
    outcomes = [{"point": json.loads(d.read_text())["point"], "status": "done"}
                for d in sorted((tmp_path / "points").glob("*/DONE.json"))]
    page = sweep.write_report({"name": "t", "preset": "cpu", "notebooks": ["03_finetune"], "params": {}},
                              tmp_path, outcomes).read_text()
    assert 'src="figures/sweep_accuracy.png"' in page and "4-bit r4 multi-task" in page and "What ran" in page
    # every figure says where its numbers came from and what the embedded base's "16-bit" is
    assert f"machines: {report.machine(int8)}; base: embedded SmolLM2-135M-Instruct" in page
    assert "the Q4_1 GGUF dequantized" in page and "training phase</i>: the resident" in page
    # the paper check at the top: every claim with a verdict (the parallel ones: evidence missing), the paper's
    # numbers beside ours with both F1s, and the setting differences
    assert page.index("The paper's claims") < page.index("Every task and configuration")
    assert page.count("<b>not measurable here</b>") >= 2 and "<b>holds</b>" in page and "evidence missing" in page
    assert "85.64" in page and "ours F1 (FinLoRA rule)" in page and "evaluation protocol and precision" in page


def test_a_varied_setting_that_is_not_a_seed_gets_its_own_column(tmp_path):
    for lr, acc in ((0.001, 0.70), (0.0001, 0.50)):
        _point(tmp_path, {"TASKS": "fpb", "SEED": 0, "LR": lr},
               [_result(f"fpb_4bit_r4_{lr}", ["fpb"], "nf4", 4, {"fpb": (acc, acc, "score")})])
    # a point that only adds the generate protocol beside score measures the same configuration
    _point(tmp_path, {"TASKS": "fpb", "SEED": 1, "COMPARE_GENERATE": True, "BASE_MODES": "score,generate"},
           [_result("fpb_8bit_r8", ["fpb"], "int8", 8, {"fpb": (0.6, 0.6, "score")})])
    agg = sweep.aggregate(tmp_path).set_index("config")
    assert agg.loc["4-bit r4 (LR=0.001)", "accuracy_mean"] == 0.70
    assert agg.loc["4-bit r4 (LR=0.0001)", "n"] == 1
    assert agg.loc["8-bit r8", "accuracy_mean"] == 0.6


def test_report_only_renders_what_finished_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "run_notebook", lambda *a, **k: pytest.fail("--report-only must not run a notebook"))
    _point(tmp_path / "out", {"TASKS": "fpb", "SEED": 0},
           [_result("fpb_4bit_r4", ["fpb"], "nf4", 4, {"fpb": (0.70, 0.68, "score")})])
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({**GRID, "params": {}, "include": [], "grid": {"TASKS": ["fpb", "fiqa"], "SEED": [0]}}))
    assert sweep.main([str(grid), "--output-dir", str(tmp_path / "out"), "--report-only"]) == 0
    assert "not finished: seed-0_tasks-fiqa" in capsys.readouterr().out
    page = (tmp_path / "out" / "index.html").read_text()
    assert "0.700 / 0.680" in page and "not run" in page


@pytest.mark.real_data
def test_rescore_uses_each_points_test_sample_and_rerenders(tmp_path, monkeypatch, capsys, real_data_dir):
    """An adapter's results file records no test sample: --rescore takes the point's MAX_TEST_SAMPLES and SEED."""
    from finlora_utils import data, evaluate
    from finlora_utils.results import read_result, write_json

    monkeypatch.setenv("FINLORA_DATA_DIR", str(real_data_dir))
    monkeypatch.setattr(sweep, "run_notebook", lambda *a, **k: pytest.fail("--rescore must not run a notebook"))
    gold = list(data.load_task("xbrl_formula", "test", max_samples=4, seed=3)["target"])
    preds = [gold[0], gold[1].split()[0].strip("("), "x", "y"]   # one exact, one echoed first operand
    stale = dict(evaluate.extraction_metrics(gold, preds), accuracy=0.5, numeric_accuracy=0.25)
    r = _result("xbrl_formula_4bit_r4", ["xbrl_formula"], "nf4", 4, {})
    r["eval_info"]["xbrl_formula"] = dict(stale, task="xbrl_formula", kind="extraction", metric="accuracy",
                                          mode="generate", truncated=0,
                                          modes={"score": dict(stale, mode="generate", predictions=preds)})
    point = {"TASKS": "xbrl_formula", "SEED": 3}
    _point(tmp_path / "out", point, [r])
    done = tmp_path / "out" / "points" / sweep.point_id(point) / "DONE.json"
    write_json(done, {**json.loads(done.read_text()), "params": {**point, "MAX_TEST_SAMPLES": 4}})
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({**GRID, "params": {"MAX_TEST_SAMPLES": 4}, "include": [],   # as the point ran
                                    "grid": {"TASKS": ["xbrl_formula"], "SEED": [3]}}))
    assert sweep.main([str(grid), "--output-dir", str(tmp_path / "out"), "--rescore"]) == 0
    assert "accuracy 0.5000 -> 0.2500" in capsys.readouterr().out
    e = read_result(done.parent / "results" / "xbrl_formula_4bit_r4.json")["eval_info"]["xbrl_formula"]
    assert e["accuracy"] == pytest.approx(0.25) and e["test_sample"] == {"max_samples": 4, "seed": 3}
    assert "0.250" in (tmp_path / "out" / "index.html").read_text()


@pytest.mark.slow
def test_a_grid_over_own_data_files_trains_evaluates_and_predicts(tmp_path, monkeypatch):
    """A task defined by a file (path relative to where the sweep starts) in a grid: 03 trains on it, 05 evaluates
    it and labels PREDICT_TEXTS. About 2.5 min on the dev box (Xeon, 2 cores shared with other jobs)."""
    import nbformat
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    grid = {"name": "own", "preset": "smoke", "notebooks": ["03_finetune", "05_evaluation"],
            "params": {"CONFIGS": "fp32:4", "MAX_TRAIN_SAMPLES": 0, "MAX_STEPS": 3, "SWEEP_SEQ_LENS": "",
                       "COMPARE_GENERATE": False, "BASE_MODES": "score", "MAX_TEST_SAMPLES": 0,
                       "PREDICT_TEXTS": ["Someone took money from my account", "I want a bigger car loan"]},
            "grid": {"TRAIN_FILE": ["tests/data/own/support_train.jsonl"]}, "include": [], "timeout": 600}
    p = tmp_path / "own.yaml"
    p.write_text(yaml.safe_dump(grid))
    outcomes, index = sweep.run_sweep(p, tmp_path / "out")
    assert [o["status"] for o in outcomes] == ["done"], outcomes
    agg = sweep.aggregate(tmp_path / "out").set_index(["task", "config"])
    assert set(agg.index) == {("support", "base"), ("support", "32-bit r4")}
    assert agg.loc[("support", "32-bit r4"), "test_examples"] == 3   # no TEST_FILE: the validation holdout
    pdir = next((tmp_path / "out" / "points").glob("*support*"))
    res = json.loads(next(pdir.glob("results/support_*_r4.json")).read_text())
    assert res["run_info"]["data_files"][0]["files"][0]["path"] == str(root / "tests/data/own/support_train.jsonl")
    assert res["eval_info"]["support"]["data_files"][0]["test"] == "validation holdout of train"
    last = nbformat.read(pdir / "executed" / "05_evaluation.ipynb", as_version=4).cells[-2]
    shown = next(o for o in last.outputs if o["output_type"] == "execute_result")["data"]["text/plain"]
    assert "Someone took money from my account" in shown and "fraud" in shown and "loan" in shown
def test_bits_rank_table_and_decomposition_on_fixture_points(tmp_path):
    """Three seeds x (16, 8, 4 bits) x (r4, r8): the two-factor table, and the 8-bit r8 -> 4-bit r4 change split
    into rank and bits from paired per-seed differences (hand-computed below)."""
    acc = {(16, 4): 0.73, (16, 8): 0.77, (8, 4): 0.72, (8, 8): 0.76, (4, 4): 0.66, (4, 8): 0.74}
    prec = {16: "bf16", 8: "int8", 4: "nf4"}
    for seed, shift in ((0, 0.0), (1, 0.01), (2, 0.0)):
        runs = [_result("fpb_base", ["fpb"], "fp32", None, {"fpb": (0.14, 0.07, "score")}, seed=seed, trained=False)]
        for (bits, rank), a in acc.items():
            a = a + shift - (0.06 if (seed, bits, rank) == (2, 4, 4) else 0.0)   # seed 2's 4-bit r4 is worse
            runs.append(_result(f"fpb_{bits}bit_r{rank}", ["fpb"], prec[bits], rank, {"fpb": (a, a - 0.01, "score")},
                                seed=seed))
        _point(tmp_path, {"TASKS": "fpb", "SEED": seed}, runs)
    rows = sweep.seed_rows(tmp_path)
    table = report.bits_rank_table(rows)
    assert list(table.index) == [("fpb", 16), ("fpb", 8), ("fpb", 4)] and list(table.columns) == ["r4", "r8"]
    assert table.loc[("fpb", 4), "r4"] == "0.643 ± 0.038 (3)"        # 0.66, 0.67, 0.60
    assert table.loc[("fpb", 16), "r8"] == "0.773 ± 0.006 (3)"
    d = report.bits_rank_decomposition(rows, "fpb")
    assert d["n_seeds"] == 3
    assert d["total"] == pytest.approx(-0.12) and d["total_std"] == pytest.approx(0.0346, abs=1e-4)
    assert d["rank"] == pytest.approx(-0.07) and d["bits"] == pytest.approx(-0.05)
    assert d["rank"] + d["bits"] == pytest.approx(d["total"])
    assert d["interaction"] == pytest.approx(-0.06)                   # rank costs 0.04 at 8 bits, 0.10 at 4 bits
    text = report.bits_rank_sentence(d)
    assert "-0.120 ± 0.035" in text and "rank change accounts for -0.070" in text and "58% of it rank" in text
    assert report.bits_rank_decomposition(rows, "fiqa") is None and "not decomposed" in report.bits_rank_sentence(None)
    outcomes = [{"point": json.loads(p.read_text())["point"], "status": "done"}
                for p in sorted((tmp_path / "points").glob("*/DONE.json"))]
    page = sweep.write_report({"name": "bits-rank", "preset": "cpu", "notebooks": ["03_finetune"], "params": {}},
                              tmp_path, outcomes).read_text()
    assert "Bits × rank" in page and "0.643 ± 0.038 (3)" in page and "58% of it rank" in page
    assert (tmp_path / "bits_rank.csv").read_text().count("\n") == 1 + 3 * 6


def test_a_finished_point_whose_grid_changed_is_named_before_anything_runs(tmp_path, monkeypatch):
    """The point used to be skipped as done, and the report then showed results of MAX_STEPS=2 under the grid's 3."""
    calls = []
    monkeypatch.setattr(sweep, "run_notebook", lambda nb, preset, pdir, timeout=None, extra_params=None, **_:
                        calls.append(nb))
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({**GRID, "grid": {"SEED": [0]}}))
    outcomes, _ = sweep.run_sweep(p, tmp_path / "out")
    assert [o["status"] for o in outcomes] == ["done"] * len(outcomes) and calls
    calls.clear()
    assert {o["status"] for o in sweep.run_sweep(p, tmp_path / "out")[0]} == {"skipped"} and not calls
    changed = {**GRID, "grid": {"SEED": [0]}, "params": {**GRID["params"], "MAX_STEPS": 3}}
    p.write_text(yaml.safe_dump(changed))
    for report_only in (False, True):
        with pytest.raises(ConfigError, match=r"DONE\.json: the point ran with MAX_STEPS=\S+, the grid now says 3; "
                                              r"expected the grid as it ran, another --output-dir"):
            sweep.run_sweep(p, tmp_path / "out", report_only=report_only)
    assert not calls


@pytest.mark.parametrize("name", [["a", "b"], "../../elsewhere", ""])
def test_a_grid_name_is_a_plain_folder_name(tmp_path, name):
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({**GRID, "name": name}))
    with pytest.raises(ConfigError, match=r"name=.*: expected a plain folder name"):
        sweep.load_grid(p)


def test_report_only_on_a_folder_without_points_is_named(tmp_path, capsys):
    """A mistyped --output-dir got an empty report and exit 0."""
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    assert sweep.main([str(grid), "--output-dir", str(tmp_path / "typo"), "--report-only"]) == 2
    assert "no points/ folder; expected the folder a sweep of this grid ran into" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
