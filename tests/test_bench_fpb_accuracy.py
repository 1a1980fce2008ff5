"""bench/fpb_accuracy.py selects the epoch on the validation split: each epoch must be scored with its own
weights (the last one once got the previous epoch's checkpoint, since the loop writes none at its last step)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.real_data
@pytest.mark.slow
def test_every_epoch_is_scored_with_its_own_adapter(tmp_path, real_data_dir):
    out = tmp_path / "fpb_accuracy"
    cmd = [sys.executable, str(ROOT / "bench" / "fpb_accuracy.py"), "--model", "tiny-random-llama",
           "--configs", "fp32:4", "--epochs", "2", "--max-train-samples", "32", "--batch", "8", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**__import__("os").environ, "FINLORA_DATA_DIR": str(real_data_dir)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1].startswith("fpb accuracy: 0.")
    doc = json.loads(out.with_suffix(".json").read_text())
    (cand,) = doc["eval_info"]["candidates"]
    assert doc["meta_info"]["base_model"]["name"] == "tiny-random-llama"   # the model it ran, not the default
    files = doc["run_info"]["data_files"]
    assert set(files) == {"train", "test"} and all(len(h) == 64 for split in files.values() for h in split.values())
    assert [e["epoch"] for e in cand["curve"]] == [1, 2]
    assert cand["peak_mem_bytes"] > 0 and cand["process_peak_mem_bytes"] >= cand["peak_mem_bytes"]   # its memory
    assert cand["peak_mem_method"].startswith("vmhwm")
    digest = {e["epoch"]: hashlib.sha256(Path(e["adapter"]).read_bytes()).hexdigest() for e in cand["curve"]}
    assert digest[1] != digest[2], "epoch 2 was scored with epoch 1's weights"
    final = next((out / "runs").glob("*/adapter/adapter_model.safetensors"))
    from safetensors.torch import load_file

    a, b = load_file(cand["curve"][1]["adapter"]), load_file(str(final))
    assert set(a) == set(b) and all(a[k].equal(b[k]) for k in a)   # the last epoch is the final adapter
