"""The pipeline micro-batch count the kit chooses (micro_batches=0): the choice, its limits, its errors, and its
prediction against the committed pipeline measurements."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from finlora_utils import flops, memory, microbatch, pipeline
from finlora_utils.config import ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# Pipeline results from before a stage built its shapes once (commit a70b548): each new shape also cost a chunk.
BEFORE_STATIC_STAGES = ("0871a15", "3530001", "967a1e9", "0d1e677")
COMPUTE = {"zen4": "bf16", "avx2-capped": "fp32"}   # what each machine folder's runs computed in (README)


@pytest.mark.parametrize("batch, device, compute, expected", [
    (4, "cpu", "bf16", 2), (16, "cpu", "bf16", 2), (32, "cpu", "bf16", 4), (64, "cpu", "bf16", 4),
    (16, "cpu", "fp32", 4), (32, "cpu", "fp32", 4), (64, "cpu", "fp32", 8),
    (8, "cuda", "bf16", 4), (32, "cuda", "fp32", 8), (64, "cuda:1", "bf16", 8)])
def test_the_choice_weighs_the_bubble_against_each_micro_batch_cost(batch, device, compute, expected):
    c = microbatch.choose(batch, 2, "1f1b", device, compute=compute)
    assert c.micro_batches == expected
    assert [m for m, _, _ in c.table] == [m for m in range(2, batch + 1) if batch % m == 0]   # 1F1B: m >= stages
    assert c.efficiency == pytest.approx(max(e for _, e, _ in c.table))
    # the bubble alone would always ask for more micro-batches; the per-micro-batch cost alone for fewer
    o = microbatch.OVERHEAD_ROWS[microbatch.kind(device, compute)]
    assert microbatch.efficiency(batch, expected, 2, 0.0) <= microbatch.efficiency(batch, batch, 2, 0.0)
    assert microbatch.efficiency(batch, expected, 2, o) <= microbatch.efficiency(batch, 1, 1, o) == 1.0


def test_gpipe_may_take_one_micro_batch_and_a_tie_takes_fewer():
    c = microbatch.choose(8, 4, "gpipe", "cpu")
    assert [m for m, _, _ in c.table] == [1, 2, 4, 8]
    assert c.table[1][1] == pytest.approx(c.table[2][1]) and c.micro_batches == 2   # 2 and 4 tie: fewer sends


def test_only_counts_that_fit_are_taken_and_none_fitting_is_said():
    fits_small_chunks = microbatch.choose(64, 2, "1f1b", "cpu", fits=lambda m: m >= 16)
    assert fits_small_chunks.micro_batches == 16 and "did not fit" in fits_small_chunks.reason
    assert [f for _, _, f in fits_small_chunks.table] == [False, False, False, True, True, True]
    none = microbatch.choose(16, 2, "1f1b", "cpu", fits=lambda m: False)
    assert none.micro_batches == 16 and none.reason.startswith("none of [2, 4, 8, 16] fits")


def test_bad_requests_name_the_parameter():
    with pytest.raises(ConfigError, match=r"^batch_size=1: expected at least nproc=2 rows for schedule='1f1b'"):
        microbatch.choose(1, 2, "1f1b")
    with pytest.raises(ConfigError, match=r"^schedule='zb': expected one of gpipe, 1f1b"):
        microbatch.choose(8, 2, "zb")
    with pytest.raises(ConfigError, match=r"^batch_size=0: expected an integer >= 1"):
        microbatch.choose(0, 2)
    with pytest.raises(ConfigError, match=r"^compute='fp16': expected bf16 or fp32"):
        microbatch.choose(8, 2, compute="fp16")
    with pytest.raises(ConfigError, match=r"^micro_batches=-1: expected >= 1, or 0 for the kit to choose"):
        TrainConfig(micro_batches=-1).validate()
    TrainConfig(micro_batches=0).validate()
    with pytest.raises(ConfigError, match=r"^batch_size=1: expected at least nproc=2"):
        pipeline.check_pipeline_config(TrainConfig(batch_size=1, micro_batches=0, schedule="1f1b",
                                                   parallel="pipeline"), 2)


def test_a_pipeline_run_and_the_planner_resolve_zero_alike(monkeypatch):
    cfg = TrainConfig(model="embedded", precision="nf4", parallel="pipeline", nproc=2, batch_size=16,
                      micro_batches=0, schedule="1f1b")
    sized, choice = pipeline.sized(cfg, 2, "cpu")
    here = "bf16" if flops.compute_dtype("nf4") == torch.bfloat16 else "fp32"   # what this CPU computes nf4 in
    expected = {"bf16": 2, "fp32": 4}[here]
    assert sized.micro_batches == choice["micro_batches"] == expected
    assert sized == dataclasses.replace(cfg, micro_batches=expected)
    assert choice["overhead_rows"] == microbatch.OVERHEAD_ROWS[f"cpu-{here}"]
    assert all(c["fits"] for c in choice["candidates"])   # the embedded model fits this machine at every count
    assert pipeline.sized(sized, 2, "cpu") == (sized, None)   # a count the config names is kept as it is
    shape = dict(seq_len=128, batch=16, gpus=2, device="cpu")
    assert memory.run_plan(cfg.to_dict(), shape).total_bytes == \
        memory.run_plan(sized.to_dict(), shape).total_bytes
    # where the planner says a count does not fit the device, the run takes one that does
    monkeypatch.setattr(pipeline, "stage_peak", lambda c, n, d: 10 ** 15 if c.micro_batches < 8 else 1)
    assert pipeline.sized(cfg, 2, "cpu")[0].micro_batches == 8
    # the stage split of a config still asking for 0 is priced at the kit's count, not left to an even split
    monkeypatch.undo()
    assert pipeline.stage_split(cfg, 2) == pipeline.stage_split(dataclasses.replace(cfg, micro_batches=expected), 2)


def _committed_pipeline_runs():
    """(machine folder, batch, micro-batches, measured efficiency) of the committed 2-stage pipeline runs with the
    shared prefix, made since a stage builds its shapes once."""
    for path in sorted((ROOT / "reports" / "showcase" / "bench").glob("*/parallel_scaling_pipeline-*.json")):
        doc = json.loads(path.read_text())
        c = doc["run_info"]["config"]
        if doc["run_info"]["git_commit"].startswith(BEFORE_STATIC_STAGES) or not c["share_prefix"]:
            continue
        assert c["nproc"] == 2 and c["schedule"] == "1f1b", path.name
        yield path.parent.name, c["batch_size"], c["micro_batches"], doc["figures"]["pipeline_efficiency"]


def test_the_prediction_holds_against_the_committed_bf16_pipeline_runs():
    """The 3-row per-micro-batch cost in bf16 was fitted on one process's throughput, not on these pipeline runs;
    it must still predict them within 0.06."""
    runs = [r for r in _committed_pipeline_runs() if COMPUTE[r[0]] == "bf16"]
    for machine, batch, m, measured in runs:
        predicted = microbatch.efficiency(batch, m, 2, microbatch.OVERHEAD_ROWS["cpu-bf16"])
        assert abs(predicted - measured) < 0.06, (machine, batch, m, predicted, measured)
    assert len(runs) >= 4


def test_the_kit_takes_a_count_within_noise_of_the_best_measured_one():
    """Where the committed runs measured two or more counts at one batch on one machine, the count the kit chooses
    there ran within 0.03 of the best of them (the fastest run of each count)."""
    best: dict = {}
    for machine, batch, m, measured in _committed_pipeline_runs():
        best.setdefault((machine, batch), {})
        best[(machine, batch)][m] = max(measured, best[(machine, batch)].get(m, 0.0))
    compared = 0
    for (machine, batch), by_count in best.items():
        if len(by_count) < 2:
            continue
        chosen = microbatch.choose(batch, 2, "1f1b", "cpu", compute=COMPUTE[machine]).micro_batches
        assert chosen in by_count and by_count[chosen] >= max(by_count.values()) - 0.03, (machine, batch, by_count)
        compared += 1
    assert compared >= 3


def test_memory_estimate_shows_the_count_the_kit_would_take(capsys):
    args = ["estimate", "--model", "llama-3.1-8b", "--gpus", "2", "--parallel", "pipeline", "--batch", "16",
            "--schedule", "1f1b", "--micro-batches", "0"]
    assert memory.main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("micro-batches: 4, chosen by the kit: predicted pipeline efficiency 0.73 (")
    assert memory.main(args + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["micro_batch_choice"]["micro_batches"] == 4
    assert memory.main(args[:-1] + ["4", "--json"]) == 0   # the same plan as naming the count
    assert json.loads(capsys.readouterr().out)["total_bytes"] == doc["total_bytes"]
    assert memory.main(args + ["--fit", "24"]) == 2
    assert "--micro-batches=0: expected a count >= 1 with --fit" in capsys.readouterr().err
    no_batch = [a for i, a in enumerate(args) if a != "--batch" and args[i - 1] != "--batch"]
    assert memory.main(no_batch) == 2
    assert "--micro-batches=0: expected --batch too" in capsys.readouterr().err
    assert memory.main(["1" if a == "16" else a for a in args]) == 2   # --batch 1: fewer rows than 1F1B's stages
    assert "error: --batch=1: expected at least --gpus=2 rows for schedule='1f1b'" in capsys.readouterr().err
