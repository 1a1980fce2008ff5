"""A 2x2 sweep with the smoke preset: killed after its first point, rerun, failures reported, aggregated."""
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from finlora_utils import sweep
from finlora_utils.config import ConfigError

GRID = {
    "name": "t",
    "preset": "smoke",
    "notebooks": ["03_finetune", "05_evaluation"],
    "params": {"TASKS": "fpb", "MAX_TRAIN_SAMPLES": 8, "SWEEP_SEQ_LENS": "", "COMPARE_GENERATE": False,
               "BASE_MODES": "score", "MAX_TEST_SAMPLES": 6},
    "grid": {"CONFIGS": ["nf4:4", "bf16:8"], "SEED": [0, 1]},
    "include": [{"CONFIGS": "nf4:0", "SEED": 0}],   # rank 0: the notebook's config cell must refuse it
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
    assert len(sweep.expand(GRID | {"grid": GRID["grid"], "include": GRID["include"]})) == 5


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
    stamp = first.stat().st_mtime_ns
    assert len(list((out / "points").glob("*/DONE.json"))) == 1

    outcomes, index = sweep.run_sweep(grid, out)
    status = {sweep.point_id(o["point"]): o for o in outcomes}
    assert status[first.parent.name]["status"] == "skipped" and first.stat().st_mtime_ns == stamp
    assert sorted(o["status"] for o in outcomes) == ["done", "done", "done", "failed", "skipped"]
    failed = status[sweep.point_id({"CONFIGS": "nf4:0", "SEED": 0})]
    assert failed["notebook"] == "03_finetune"
    assert "03_finetune.ipynb failed in cell" in failed["error"] and "rank" in failed["error"]
    assert not (out / "points" / sweep.point_id({"CONFIGS": "nf4:0", "SEED": 0}) / "DONE.json").exists()

    agg = sweep.aggregate(out)
    table = sweep.paper_layout(agg)
    assert list(table.index) == ["fpb"]
    assert sorted(table.columns) == ["16-bit r8", "4-bit r4", "base"]
    assert agg.set_index("config").loc["4-bit r4", "n"] == 2      # two seeds averaged
    assert "±" in table.loc["fpb", "4-bit r4"]
    html = index.read_text()
    assert "Failed points" in html and "03_finetune" in html


def test_an_include_point_may_run_only_some_notebooks(tmp_path, monkeypatch):
    """Zero-shot-only tasks (nwgi, the XBRL test sets) have no train split: their point skips 03_finetune."""
    calls = []
    monkeypatch.setattr(sweep, "run_notebook", lambda nb, preset, pdir, timeout=None, extra_params=None:
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
