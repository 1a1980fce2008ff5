"""A fresh copy of the kit with no data and no network runs the study on its sample set (issues 18 and 19).

The copy holds only git-tracked files (no data/cache, no data/sample, no ../shared beside it); FINLORA_DATA_DIR and
FINLORA_CACHE_DIR are unset and FINLORA_OFFLINE=1 disables downloads. The smoke preset's model and sizes keep it
short, with the task lists of the default `cpu` preset written into the copy's smoke preset, so notebook 00 meets
tasks the sample set does not cover.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finlora_utils.paths import project_root

NOTEBOOKS = ("00_data", "03_finetune", "05_evaluation", "06_report")
ENV_DROP = ("FINLORA_DATA_DIR", "FINLORA_CACHE_DIR", "FINLORA_SAMPLE_DIR", "FINLORA_DOWNLOAD_BASE",
            "FINLORA_REPORTS_DIR", "PYTHONPATH")


def _fresh_copy(dst: Path) -> Path:
    root = project_root()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout.split(b"\0")
    for rel in (f.decode() for f in files if f):
        src = root / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def _cpu_task_lists_into_smoke(kit: Path) -> dict:
    presets = kit / "finlora_utils" / "presets"
    cpu = yaml.safe_load((presets / "cpu.yaml").read_text())["notebooks"]
    smoke = yaml.safe_load((presets / "smoke.yaml").read_text())
    for nb, params in cpu.items():
        for key in ("TASKS", "TASK"):
            if key in params:
                smoke["notebooks"].setdefault(nb, {})[key] = params[key]
    smoke["notebooks"]["03_finetune"].update(CONFIGS="nf4:4", SWEEP_SEQ_LENS="")   # one short run is enough here
    smoke["notebooks"]["05_evaluation"].update(BASE_MODES="score", COMPARE_GENERATE=False)
    (presets / "smoke.yaml").write_text(yaml.safe_dump(smoke))
    return cpu


@pytest.mark.slow
def test_fresh_copy_without_data_or_network_runs_the_study_on_the_sample_set(tmp_path):
    kit = _fresh_copy(tmp_path / "kit")
    assert not (tmp_path / "shared").exists() and not (kit / "data" / "cache").exists()
    cpu = _cpu_task_lists_into_smoke(kit)
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env.update(FINLORA_OFFLINE="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(kit))
    out = kit / "reports"
    proc = subprocess.run([sys.executable, "-m", "finlora_utils.study", "all", "--preset", "smoke",
                           "--notebooks", ",".join(NOTEBOOKS)], cwd=kit, env=env, capture_output=True, text=True,
                          timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    # notebook 00 profiles every task of the cpu preset or says, once, why not and how to get it
    wanted = cpu["00_data"]["TASKS"].split(",")
    summary = json.loads((out / "results" / "data" / "00_data_summary.json").read_text())
    # how it was made (this copy has no .git, so no commit to name)
    assert "git_commit" in summary and summary["meta_info"]["base_model"]["name"] == summary["model_tokenizer"]
    profiled = {r["task"] for r in summary["overview"]}
    skipped = {r["task"] for r in summary["skipped"]}
    assert profiled == {"fpb", "fiqa", "tfns", "nwgi"}, profiled     # what the sample set covers
    assert profiled | skipped == set(wanted), "a task was dropped without a word"
    for task in skipped:
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith(f"skipped {task} ")]
        assert len(lines) == 1, (task, lines)
        assert f"python -m finlora_utils.data fetch {task}" in lines[0] and "FINLORA_OFFLINE" in lines[0]
    assert {r["source"] for r in summary["overview"]} == {"sample"} and summary["data_source"] == "sample"

    # the training run says where its data came from, and so does every page and the index
    trained = [json.loads(p.read_text()) for p in (out / "results").glob("*.json")]
    trained = [r for r in trained if r.get("train_info")]
    assert trained and {r["run_info"]["data_source"] for r in trained} == {"sample"}
    for nb in NOTEBOOKS:
        page = (out / "html" / f"{nb}.html").read_text()
        assert "data: sample" in page and "synthetic sample set" in page, nb
    assert "data: sample" in (out / "index.html").read_text()

    # issue 19: progress a person can follow, the same text in the log, and none of the two known warnings
    assert "[study] 1/4 00_data: cell 1/" in proc.stdout and "[study] 2/4 03_finetune: running" in proc.stdout
    assert "[train fpb_" in proc.stdout and " step " in proc.stdout and "eta" in proc.stdout
    assert "is_gradient_checkpointing" not in log
    assert "Kernel is running over TCP" not in log
    study_log = (out / "executed" / "study.log").read_text()
    assert [ln for ln in proc.stdout.splitlines() if ln.startswith("[")] == \
        [ln for ln in study_log.splitlines() if ln.startswith("[")]
    assert "[study] report:" in proc.stdout and "data: sample" in proc.stdout.split("[study] finished")[-1]
    assert not [p for p in (kit / "notebooks").iterdir() if p.suffix != ".ipynb"], "kernel left files behind"


def test_data_plan_and_banner_say_sample_and_name_what_is_missing(tmp_path, monkeypatch):
    from finlora_utils import study

    for k in ENV_DROP:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("FINLORA_OFFLINE", "1")
    monkeypatch.setenv("FINLORA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FINLORA_SAMPLE_DIR", str(tmp_path / "sample"))
    plan = study.data_plan(["00_data", "02_lora_setup"], {"00_data": {"TASKS": "fpb,ner"}, "02_lora_setup": {}})
    assert plan["label"] == "sample" and plan["tasks"]["fpb"] == {"train": "sample", "test": "sample"}
    assert set(plan["missing"]) == {"ner"} and "fetch ner" in plan["hints"]["ner"]
    page = study.data_banner_html(plan, ["fpb", "ner"])
    assert "data: sample" in page and "Skipped ner (train, test)" in page and "#8b0000" in page
    assert "loads no task data itself" in study.data_banner_html(plan, [])
    monkeypatch.setenv("FINLORA_DATA_DIR", str(tmp_path / "real"))   # the real files, laid out like the shared copy
    (tmp_path / "real" / "finlora" / "test").mkdir(parents=True)
    (tmp_path / "real" / "finlora" / "test" / "nwgi_test.jsonl").write_text("")
    real = study.data_plan(["05_evaluation"], {"05_evaluation": {"TASKS": "nwgi"}})
    assert real["label"] == "real" and "data: real" in study.data_banner_html(real, ["nwgi"])


def test_progress_shows_whole_lines_and_the_last_state_of_a_redrawn_one(tmp_path, capsys):
    from finlora_utils.study import Progress

    p = Progress(tmp_path / "study.log", mode="w")
    for chunk in ("Map: 10%\r", "Map: 50%", "\rMap: 100%\n", "[train x] step 1/4", "  loss 1.0\n", "tail"):
        p.write(chunk)
        p.flush()   # papermill flushes after every write: nothing half-drawn may appear
    p.line("[study] done")
    p.close()
    shown = capsys.readouterr().out.splitlines()
    assert shown == ["    Map: 100%", "    [train x] step 1/4  loss 1.0", "[study] done", "    tail"]
    assert (tmp_path / "study.log").read_text().splitlines() == shown
