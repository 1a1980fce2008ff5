"""bench/gpu_check.py --dry-run: the GPU check's own code runs on CPU and says which items it could not run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_runs_every_check_and_skips_only_cuda_items(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=900,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1].startswith("gpu check: 6 ok, 0 failed, 2 skipped")
    res = json.loads(out.read_text())
    checks = res["checks"]
    for bits, precision in ((16, "bf16"), (8, "int8"), (4, "nf4")):
        c = checks[f"lora_step_{bits}bit"]
        assert c["status"] == "ok" and c["precision"] == precision and c["steps"] == 2
        assert math.isfinite(c["loss_last"]) and c["peak_mem_bytes"] > 0 and c["planner"]["total_bytes"] > 0
        assert c["share_prefix"] is True, c["share_prefix_reason"]
    shared = checks["shared_prefix"]
    assert shared["status"] == "ok" and shared["layout"][0] > 0 and shared["max_rel_grad_diff"] < 5e-2
    for name in ("paged_adamw_8bit", "ddp_nccl"):
        assert checks[name]["status"] == "skipped" and checks[name]["reason"].startswith("no CUDA")
    auto = checks["autocast"]
    assert auto["status"] == "ok" and auto["chosen"]["fp32"] == "None" and len(auto["kit_choice_losses"]) == 2
    assert auto["fp16_grad_scaler"]["reason"].startswith("no CUDA")
    score = checks["label_scoring"]
    assert score["status"] == "ok" and score["nf4"]["identical_predictions"] == f"{score['n']}/{score['n']}"
    # provenance from the results helpers
    assert res["run_info"]["git_commit"] and res["meta_info"]["packages"]["torch"]
    assert res["meta_info"]["hardware"]["gpus"] == 0 and res["summary"]["failed"] == []
