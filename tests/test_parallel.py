"""Data- and pipeline-parallel training on 2 CPU processes: the same numbers as one process, failures that
end the run with the failing rank's error, and a two-node rendezvous on loopback.

Tolerances. In fp32 there is no autocast and the parallel runs are exact up to float rounding: losses agree to
a relative 1e-5 and adapter tensors to 1e-4 (Frobenius). At nf4 (the QLoRA path) this CPU trains with bf16
autocast, and bf16 matmuls round differently when a batch is split across ranks or stages: losses still agree
to 2e-4, but AdamW's first update is lr * sign(gradient), so a near-zero gradient entry whose sign flips moves
an adapter entry by 2 * lr; nf4 runs are therefore compared on losses, fp32 runs on losses and adapters.
LoRA dropout is 0 so that no random mask depends on the layout.
"""
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from finlora_utils import parallel, pipeline, train
from finlora_utils.config import ConfigError, LoraSettings, TrainConfig
from finlora_utils.tokenization import collate

RTOL = {"nf4": 2e-4, "fp32": 1e-5}          # losses
ADAPTER_RTOL = 1e-4                         # |a - b| / |b| per adapter tensor (fp32)
LAUNCH_TIMEOUT = 240


def tiny(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(model="tiny-random-llama", tasks=("fpb",), precision="nf4",
                lora=LoraSettings(rank=4, alpha=16.0, dropout=0.0), max_train_samples=24, batch_size=4,
                max_steps=4, max_seq_len=96, lr=5e-3, warmup_ratio=0.0, seed=0, log_every=1,
                output_dir=str(tmp_path / "runs"))
    base.update(kw)
    return TrainConfig(**base)


def losses(result: dict) -> list[float]:
    return [loss for _, loss in result["train_info"]["loss_curve"]]


def adapter(result: dict) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(result["train_info"]["adapter_path"]) / "adapter_model.safetensors")


def assert_same_adapter(a: dict, b: dict, values: bool = True) -> None:
    assert a.keys() == b.keys() and len(a) == 12   # q, k, v x A, B x 2 layers
    for k in a:
        assert a[k].shape == b[k].shape
        rel = (torch.linalg.norm(a[k] - b[k]) / torch.linalg.norm(b[k])).item()
        assert rel < ADAPTER_RTOL or not values, f"{k}: relative difference {rel:.2e}"


_singles: dict = {}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """single(precision): the single-process reference run in this process (train.train, no torchrun)."""
    def run(precision: str) -> dict:
        if precision not in _singles:
            tmp = tmp_path_factory.mktemp(f"single-{precision}")
            res = train.train(tiny(tmp, precision=precision), results_dir=tmp / "results", force=True,
                              log=lambda *a: None)
            curve = losses(res)
            assert curve[-1] < curve[0] - 0.05, "the reference must actually train, or equality proves nothing"
            _singles[precision] = res
        return _singles[precision]
    return run


# ---------------------------------------------------------------- equivalence (2 processes)

@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path, single):
    ref = single("fp32")
    cfg = tiny(tmp_path, parallel="ddp", nproc=2, precision="fp32")   # batch_size is global: 2 per rank
    shown = []
    res = parallel.launch(cfg, timeout_s=LAUNCH_TIMEOUT, results_dir=tmp_path / "results", force=True,
                          log=shown.append)
    assert losses(res) == pytest.approx(losses(ref), rel=RTOL["fp32"])
    # what a notebook (04) and `make study` show while the ranks train: rank 0's progress lines, unprefixed
    steps = [ln for ln in shown if ln.startswith(f"[train {cfg.run_id()}] step ")]
    assert steps and steps[-1].startswith(f"[train {cfg.run_id()}] step {res['train_info']['steps']}/"), shown
    assert not any(ln.startswith("[default0]:") for ln in shown), shown
    ti, ref_ti = res["train_info"], ref["train_info"]
    # each global batch sharded without duplicates or drops: the same examples and target tokens
    assert (ti["examples"], ti["target_tokens"]) == (ref_ti["examples"], ref_ti["target_tokens"])
    par = ti["parallel"]
    assert par["mode"] == "ddp" and par["world_size"] == 2 and par["per_rank_batch"] == 2
    assert [r["rank"] for r in par["ranks"]] == [0, 1] and all(r["peak_mem_bytes"] > 0 for r in par["ranks"])
    assert_same_adapter(adapter(res), adapter(ref))
    # only rank 0 wrote: one results file, one adapter, no checkpoints left behind
    assert [p.name for p in (tmp_path / "results").glob("*.json")] == [f"{cfg.run_id()}.json"]
    assert sorted(p.name for p in (tmp_path / "runs" / cfg.run_id()).iterdir()) == ["adapter"]


@pytest.mark.slow
@pytest.mark.parametrize("schedule, precision, micro_batches", [("gpipe", "fp32", 2), ("1f1b", "nf4", 0)])
def test_pipeline_matches_single_process(tmp_path, single, schedule, precision, micro_batches):
    ref = single(precision)
    cfg = tiny(tmp_path, parallel="pipeline", nproc=2, micro_batches=micro_batches, schedule=schedule,
               precision=precision)
    res = parallel.launch(cfg, timeout_s=LAUNCH_TIMEOUT, results_dir=tmp_path / "results", force=True, log=None)
    assert losses(res) == pytest.approx(losses(ref), rel=RTOL[precision])
    par = res["train_info"]["parallel"]
    assert par["split"] == [1, 1] and par["schedule"] == schedule and par["micro_batches"] == 2
    if micro_batches == 0:   # the kit chose (batch 4 on CPU: 2 micro-batches of 2 beat 4 of 1), and says how
        choice = par["micro_batch_choice"]
        assert choice["micro_batches"] == 2 and [c["micro_batches"] for c in choice["candidates"]] == [2, 4]
        assert res["run_info"]["config"]["micro_batches"] == 0   # the config keeps what it was asked
        # so asking again finds the finished run, whatever count this machine would choose
        again = parallel.launch(cfg, timeout_s=LAUNCH_TIMEOUT, results_dir=tmp_path / "results", log=None)
        assert again["_path"] == res["_path"] and losses(again) == losses(res)
    else:
        assert par["micro_batch_choice"] is None
    assert [r["layers"] for r in par["ranks"]] == [[0, 1], [1, 2]]
    # stages take the single process's attention kernel for short CPU batches, and the planner prices it
    assert res["train_info"]["memory_plan"]["math_attention"] is ref["train_info"]["memory_plan"]["math_attention"] is True
    # both pack their examples' shared prefix once (the pipeline per chunk of 2), and the planner prices that
    assert res["train_info"]["share_prefix"] is ref["train_info"]["share_prefix"] is True
    assert 0 < res["train_info"]["memory_plan"]["shared_prefix"] < res["train_info"]["memory_plan"]["seq_len"]
    assert_same_adapter(adapter(res), adapter(ref), values=precision == "fp32")
    if precision == "fp32":
        _check_reassembled_adapter(res, ref)


def _check_reassembled_adapter(res: dict, single: dict) -> None:
    """Rank 0's adapter is one standard PEFT adapter: plain PEFT loads it, every stage's tensors are in it,
    and the model it makes scores like the single-process adapter's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finlora_utils.models import resolve_model_path

    a = adapter(res)
    assert any(".layers.1." in k for k in a) and any(".layers.0." in k for k in a)
    base = resolve_model_path("tiny-random-llama")
    ids = torch.tensor([[1, 300, 4000, 77, 9, 1200, 5]])
    logits = []
    for r in (res, single):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                          r["train_info"]["adapter_path"])
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)
    # and the adapter changed the model: it is not an untrained (B = 0) adapter
    bare = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        assert not torch.allclose(bare(input_ids=ids).logits, logits[0], atol=1e-4)


# ---------------------------------------------------------------- failures

@pytest.mark.slow
def test_failing_rank_ends_the_run_with_its_error_and_the_rerun_resumes(tmp_path, single):
    # rank 0 checkpoints after step 2; rank 1 dies after step 3 while rank 0 waits in an all-reduce
    cfg = tiny(tmp_path, parallel="ddp", nproc=2, precision="fp32", save_every=2)
    t0 = time.time()
    with pytest.raises(parallel.ParallelRunError,
                       match=r"rank 1 failed: RuntimeError: injected fault on rank 1 after step 3") as err:
        parallel.launch(cfg, timeout_s=LAUNCH_TIMEOUT, results_dir=tmp_path / "results", log=None,
                        env={parallel.FAULT_ENV: "rank=1,step=3"})
    assert time.time() - t0 < LAUNCH_TIMEOUT  # rank 0 did not hang the run
    assert err.value.rank == 1 and err.value.exitcode not in (0, None)
    assert "Traceback" in str(err.value)
    # nothing partial is written as a finished result
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.json"))
    assert not (tmp_path / "runs" / cfg.run_id() / "adapter").exists()
    # the same call again resumes from the step-2 checkpoint and ends where an uninterrupted run ends
    res = parallel.launch(cfg, timeout_s=LAUNCH_TIMEOUT, results_dir=tmp_path / "results", log=None)
    assert res["train_info"]["resumed_from_step"] == 2
    assert losses(res) == pytest.approx(losses(single("fp32")), rel=RTOL["fp32"])
    assert_same_adapter(adapter(res), adapter(single("fp32")))


@pytest.mark.slow
def test_a_comparison_rerun_reads_back_runs_timed_alike_and_keeps_their_evaluations(tmp_path):
    """Notebook 04 retrained every mode on every rerun (force), which also erased the evaluations 05 had stored
    in those results: a finished run with the same threads per process is read back now, another is retrained."""
    configs = parallel.comparison_configs(tiny(tmp_path, max_steps=2, max_train_samples=8), "none", 2)
    kw = dict(timeout_s=LAUNCH_TIMEOUT, results_dir=tmp_path / "results", log=None)
    first = parallel.run_comparison(configs, **kw)["none"]
    path = Path(first["_path"])
    stored = json.loads(path.read_text())
    stored["eval_info"] = {"fpb": {"accuracy": 0.5}}   # as 05_evaluation leaves it
    path.write_text(json.dumps(stored))
    again = parallel.run_comparison(configs, **kw)["none"]
    assert again["eval_info"] == {"fpb": {"accuracy": 0.5}} and again["train_info"] == first["train_info"]
    stored["meta_info"]["hardware"]["torch_threads"] += 1   # timed with another share of the cores
    path.write_text(json.dumps(stored))
    lines = []
    retrained = parallel.run_comparison(configs, **dict(kw, log=lines.append))["none"]
    assert any("retraining it" in ln for ln in lines) and retrained["eval_info"] != {"fpb": {"accuracy": 0.5}}
    forced = parallel.run_comparison(configs, **kw, force=True)["none"]
    assert forced["train_info"]["wall_s"] != retrained["train_info"]["wall_s"]


def test_a_hidden_warning_takes_its_source_line_with_it():
    """04's output showed '[default1]:  parts = [load_task(...)]', the source line of a warning it had hidden."""
    out = ["[default1]:/x/loader.py:9: UserWarning: task 'fpb': real data not reachable",
           "[default0]:[train] step 1/4", "[default1]:  parts = [load_task(n, split)]", "[default1]:  indented result",
           "plain line", "", "  an indented line after a blank one",
           "[default1]:warning: task 'fpb': real data not reachable"]   # as a rank's cli_entry formats it
    code = "import sys; print(sys.argv[1])"
    lines = []
    rc, _ = parallel._run_bounded([sys.executable, "-c", code, "\n".join(out)], 30, dict(os.environ), lines.append)
    assert rc == 0 and lines == ["[train] step 1/4", "[default1]:  indented result", "plain line",
                                 "  an indented line after a blank one"], lines


def test_timeout_kills_the_whole_process_group():
    # a launcher whose child never ends: the timeout must take the child down too, not just the parent
    code = "import subprocess, sys, time; p = subprocess.Popen(['sleep', '300']); print(p.pid, flush=True); time.sleep(300)"
    lines = []
    t0 = time.time()
    rc, _ = parallel._run_bounded([sys.executable, "-c", code], 3, dict(os.environ), lines.append)
    assert rc == "timeout" and time.time() - t0 < 15
    child = int(lines[0])
    deadline = time.time() + 5
    while time.time() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child), "the timed-out launcher's child survived"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"   # a zombie is dead, only not yet reaped by its new parent


def test_launch_timeout_is_a_clear_error(tmp_path):
    cfg = tiny(tmp_path, parallel="ddp", nproc=2)
    t0 = time.time()
    with pytest.raises(parallel.ParallelRunError, match=r"no result within timeout_s=2; all ranks were killed"):
        parallel.launch(cfg, timeout_s=2, results_dir=tmp_path / "results", log=None)
    assert time.time() - t0 < 20


def test_root_cause_prefers_the_raising_rank_over_its_disconnected_peers(tmp_path):
    import json

    for rank, msg, stamp in ((0, "RuntimeError: Connection closed by peer [127.0.0.1]:1234", 100),
                             (1, "ValueError: bad batch", 101)):
        d = tmp_path / "run_x" / "attempt_0" / str(rank)
        d.mkdir(parents=True)
        (d / "error.json").write_text(json.dumps({"message": {"message": msg, "extraInfo": {
            "py_callstack": f"Traceback (most recent call last):\n{msg}\n", "timestamp": str(stamp)}}}))
    rank, text, stack = parallel._root_cause(tmp_path)
    assert (rank, text) == (1, "ValueError: bad batch") and stack.startswith("Traceback")


# ---------------------------------------------------------------- multi-node

@pytest.mark.slow
def test_two_nodes_rendezvous_on_loopback(tmp_path, single):
    """Two torchrun agents ("nodes", one rank each) meet through the c10d rendezvous on 127.0.0.1 and
    train as one DDP job (nf4: the QLoRA path): rank 0's node returns the results, which equal the
    single-process run's."""
    cfg = tiny(tmp_path, parallel="ddp", nproc=1)
    endpoint = f"127.0.0.1:{parallel.free_port()}"
    out: dict = {}

    def node(i):
        try:
            out[i] = parallel.launch(cfg, nproc=1, nnodes=2, rdzv_endpoint=endpoint, rdzv_id="loopback-test",
                                     timeout_s=LAUNCH_TIMEOUT, results_dir=tmp_path / "results", force=True,
                                     log=None, threads_per_rank=1)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            out[i] = e

    threads = [threading.Thread(target=node, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LAUNCH_TIMEOUT + 30)
    assert not any(isinstance(v, Exception) for v in out.values()), out
    results = [v for v in out.values() if v]
    assert len(results) == 1, "exactly one node holds global rank 0 and returns the results"
    res = results[0]
    assert res["train_info"]["parallel"]["world_size"] == 2
    assert losses(res) == pytest.approx(losses(single("nf4")), rel=RTOL["nf4"])


STAGE_WORKER = """
import json, sys, torch, torch.distributed as dist
from finlora_utils import pipeline, train
from finlora_utils.config import LoraSettings, TrainConfig

dist.init_process_group("gloo")
rank = dist.get_rank()
cfg = TrainConfig(model="tiny-random-llama", precision="fp32", lora=LoraSettings(rank=4, dropout=0.0))
model, _ = train.build_model(cfg)
module, names = pipeline.build_stage(model, rank, pipeline.stage_split(cfg, 2))
runner = pipeline.StageRunner(module, rank, 2, torch.device("cpu"), "1f1b")
if sys.argv[1] == "dynamic":   # torch infers every new shape's metadata itself, as before
    runner._examples = lambda chunks, shape: {}
seen = []
module.register_forward_hook(lambda m, a, o: seen.append(list(a[0].shape)))
out = []
for n in (5, 21, 40):   # padded to 16, 32, 48: a new stage and schedule for every micro-batch
    rows = [dict(input_ids=[1] + [7 + i + j for j in range(n - 2)] + [2], labels=[-100] * (n - 2) + [9, 2])
            for i in range(4)]
    runner.n_targets, runner.losses = 4, []
    runner.run(pipeline.micro_batch(rows, 2, pad_id=0, max_len=96, pack=False), 2)
    grads = sorted((names[p], p.grad.double().norm().item()) for p in names)
    out.append(dict(loss=sum(x.item() for x in runner.losses), grads=grads))
    for p in names:
        p.grad = None
# a file per rank: the ranks share torchrun's stdout, where two long lines can interleave
with open(f"{sys.argv[2]}/result-{sys.argv[1]}-{rank}.json", "w") as f:
    json.dump(dict(rank=rank, seen=seen, out=out), f)
dist.destroy_process_group()
"""


def _stage_run(tmp_path: Path, mode: str) -> list[dict]:
    script = tmp_path / "stage_worker.py"
    script.write_text(STAGE_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{parallel.free_port()}", str(script), mode, str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    found = [json.loads(p.read_text()) for p in tmp_path.glob(f"result-{mode}-*.json")]
    return sorted(found, key=lambda r: r["rank"])


@pytest.mark.slow
def test_a_stage_runs_one_forward_per_chunk_after_its_first_shape(tmp_path):
    """Given no example tensors, a torch PipelineStage infers its shapes by running a real forward and backward
    of one chunk, on every new stage, so once per new micro-batch shape (torch 2.13): up to 25 % more work per step
    at 4 chunks when every step is a new length. StageRunner infers only the first shape and builds later ones
    from it; the losses and every LoRA gradient are those of the inferring path."""
    static, dynamic = _stage_run(tmp_path, "static"), _stage_run(tmp_path, "dynamic")
    assert [r["rank"] for r in static] == [r["rank"] for r in dynamic] == [0, 1]
    for s, d in zip(static, dynamic):
        # 3 micro-batches x 2 chunks; one extra forward for the first shape (9 per rank when every shape infers)
        assert len(s["seen"]) == 2 * 3 + 1 and len(d["seen"]) == 2 * 3 + 3, (s["seen"], d["seen"])
        for a, b in zip(s["out"], d["out"]):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
            assert [n for n, _ in a["grads"]] == [n for n, _ in b["grads"]] and a["grads"]
            # (only lora_B's gradients are nonzero here: B starts at zero, so A's gradient is zero on both paths)
            assert [g for _, g in a["grads"]] == pytest.approx([g for _, g in b["grads"]], rel=1e-6)
            assert any(g > 0 for n, g in a["grads"] if "lora_B" in n)
    assert static[1]["out"][0]["loss"] > 0 and static[0]["seen"][1] == [2, 16]   # stage 0 sees token ids


# ---------------------------------------------------------------- the stage split, in one process

def test_stages_chained_by_hand_give_the_full_model_loss():
    """Stage 0 then stage 1 of a 2-stage split, with the last stage's label-only loss, equal train.loss_fn
    on the unsplit model (fp32: exact), padded chunks and packed ones (each chunk one shared-prefix
    sequence, pipeline.micro_batch) alike, and every LoRA parameter lands in exactly one stage."""
    from finlora_utils import shared_prefix

    cfg = TrainConfig(model="tiny-random-llama", precision="fp32", lora=LoraSettings(rank=4, dropout=0.0))
    rows = [dict(input_ids=[1, 50, 60, 70, 80, 2], labels=[-100, -100, -100, 70, 80, 2]),
            dict(input_ids=[1, 50, 60, 91, 2], labels=[-100, -100, -100, 91, 2]),
            dict(input_ids=[1, 50, 60, 33, 34, 35, 2], labels=[-100, -100, -100, -100, 34, 35, 2]),
            dict(input_ids=[1, 50, 60, 40, 2], labels=[-100, -100, -100, 40, 2])]
    ref_model, _ = train.build_model(cfg)
    ref_sum, n = train.loss_fn(ref_model, collate(rows, pad_id=0))
    total_lora = sum(1 for p in ref_model.parameters() if p.requires_grad)
    split = pipeline.stage_split(cfg, 2)
    stages, found = [], {}
    for s in range(2):
        model, _ = train.build_model(cfg)
        module, names = pipeline.build_stage(model, s, split)
        stages.append(module)
        found.update({n_: s for n_ in names.values()})
    assert len(found) == total_lora and {s for s in found.values()} == {0, 1}
    assert all(".layers.0." in k for k, s in found.items() if s == 0)
    runner = pipeline.StageRunner(stages[1], 1, 2, torch.device("cpu"), "gpipe")
    runner.n_targets = n
    for pack in (False, True):
        mb = pipeline.micro_batch(rows, 2, pad_id=0, max_len=96, pack=pack)
        assert (mb["layout"] is not None) is pack
        if pack:   # 2 chunks, each [prefix 3][2 x 8]: one packed row per chunk, the schedule's dim-0 split
            assert mb["layout"] == (3, 2, 8) and mb["input_ids"].shape == (2, 3 + 2 * 8)
        total = 0.0
        for chunk, targets in zip(mb["input_ids"].tensor_split(2), mb["targets"].tensor_split(2)):
            for st in stages:
                st.layout = mb["layout"]
            ctx = [shared_prefix.attention(st.inner) for st in stages] if pack else []
            with torch.no_grad(), contextlib.ExitStack() as stack:
                for c in ctx:
                    stack.enter_context(c)
                total += runner._loss(stages[1](stages[0](chunk)), targets).item()
        assert total == pytest.approx(ref_sum.item() / n, rel=1e-6), pack


@pytest.mark.parametrize("precision", ["nf4", "int8"])
def test_a_stage_loads_and_keeps_only_its_own_weights(precision):
    """Per-stage loading: a rank materializes and quantizes its stage's parameters only (the others never leave
    the meta device), they equal the whole model's (packed 4-bit / int8 bytes and scales, the adapter's initial
    values), and after the cut the stage holds exactly those."""
    from finlora_utils.stage_weights import resident_parameters

    cfg = TrainConfig(model="tiny-random-llama", precision=precision, lora=LoraSettings(rank=4, dropout=0.0))
    whole, _ = train.build_model(cfg)
    split = pipeline.stage_split(cfg, 2)
    for s in range(2):
        keep = pipeline.stage_parameters(split, s)
        expected = sum(p.numel() for n, p in whole.get_base_model().named_parameters(remove_duplicate=False) if keep(n))
        model, _ = pipeline.load_stage(cfg, s, split)
        real = {n: p for n, p in model.get_base_model().named_parameters() if p.device.type != "meta"}
        assert real and all(keep(n) for n in real), [n for n in real if not keep(n)]
        assert resident_parameters(model) == expected < sum(p.numel() for p in whole.parameters())
        for n, p in real.items():
            ref = whole.get_base_model().get_parameter(n)
            assert type(p) is type(ref) and torch.equal(p.data, ref.data), n
            for attr in ("SCB",):
                if getattr(ref, attr, None) is not None:
                    assert torch.equal(getattr(p, attr), getattr(ref, attr)), n
            if getattr(ref, "quant_state", None) is not None:
                assert torch.equal(p.quant_state.absmax, ref.quant_state.absmax), n
        module, names = pipeline.build_stage(model, s, split)
        assert all(p.device.type != "meta" for p in module.parameters())
        assert sum(p.numel() for p in module.parameters()) == expected and len(names) == 6   # q, k, v x A, B


def test_stage_split_comes_from_the_memory_planner():
    from finlora_utils import memory

    cfg = TrainConfig(model="meta-llama/Llama-3.1-70B-Instruct", precision="nf4", batch_size=4, micro_batches=4)
    split = pipeline.stage_split(cfg, 4, device="cuda")
    planned = memory.plan(model=cfg.model, bits=4, rank=4, seq_len=cfg.max_seq_len, batch=4, gpus=4,
                          parallel="pipeline", micro_batches=4, device="cuda", label_only_logits=True)
    assert split == planned.layers_per_device and sum(split) == 80 and min(split) >= 1
    # fp32 is 32 bits in run ids but a 16-bit plan with 4-byte tensors (32 once made the planner raise and the
    # split silently fall back to even)
    fp32 = TrainConfig(model=cfg.model, precision="fp32", batch_size=4, micro_batches=4, schedule="1f1b")
    planned32 = memory.plan(model=cfg.model, bits=16, rank=8, seq_len=cfg.max_seq_len, batch=4, gpus=4,
                            parallel="pipeline", micro_batches=4, device="cuda", label_only_logits=True,
                            compute_bytes=4, base_bytes=4, schedule="1f1b")
    assert pipeline.stage_split(fp32, 4, device="cuda") == planned32.layers_per_device != memory.pipeline_split(80, 4)
    with pytest.raises(ConfigError, match=r"^nproc=3: expected at most 2 pipeline stages"):
        pipeline.stage_split(TrainConfig(model="tiny-random-llama"), 3)


def test_even_pipeline_split_gives_every_stage_the_same_layers_and_the_planner_prices_it():
    """pipeline_split='even' (faster on CPU where memory is not the limit: bench/parallel_scaling.py) splits the
    layers evenly, and the planner prices that split per stage, so memory_plan and the report agree with it."""
    from finlora_utils import memory

    kw = dict(model="embedded", precision="nf4", parallel="pipeline", nproc=2, micro_batches=4, schedule="1f1b",
              batch_size=16, max_seq_len=128)
    mem, even = TrainConfig(**kw), TrainConfig(**kw, pipeline_split="even")
    assert pipeline.stage_split(even, 2) == [15, 15] and pipeline.stage_split(mem, 2) == [11, 19]
    shape = dict(seq_len=112, batch=16, gpus=2, device="cpu")
    p_mem, p_even = memory.run_plan(mem.to_dict(), shape), memory.run_plan(even.to_dict(), shape)
    assert p_even.layers_per_device == [15, 15] and p_mem.layers_per_device == [11, 19]
    # the memory split's most loaded stage is lighter: that is what it is for
    assert max(d["training_bytes"] for d in p_mem.per_device) < max(d["training_bytes"] for d in p_even.per_device)
    with pytest.raises(ConfigError, match=r"^balance='compute': expected one of memory, even"):
        memory.plan(model="embedded", bits=4, gpus=2, parallel="pipeline", balance="compute")


def test_a_pipeline_checkpoint_resumes_only_in_its_own_layout(tmp_path):
    """A stage checkpoint records whether its chunks were packed; one written before pipeline chunks could pack
    (no such key: padded) or in the other layout is refused, naming the field, instead of mixing the two."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        stage = pipeline.Stage(0, 1, torch.device("cpu"))
        stage.config, stage.split, stage.pack, stage.pack_why = TrainConfig(), [2], True, "config"
        root = tmp_path / "run" / "stage-0-of-1"
        assert stage.agree(None, root) is None                       # a fresh start
        ours = dict(step=2, **stage.fresh())
        assert ours["share_prefix"] is True and stage.agree(ours, root) is ours
        with pytest.raises(ConfigError, match=r"^share_prefix=True: the checkpoint in .*run was made with padded "
                                              r"chunks and this run packs them \(config\); expected the same layout"):
            stage.agree(dict(step=2, split=[2]), root)                # written before chunks could pack
        stage.pack, stage.pack_why = False, "share_prefix off"
        with pytest.raises(ConfigError, match=r"made with packed chunks and this run pads them \(share_prefix off\)"):
            stage.agree(ours, root)
    finally:
        dist.destroy_process_group()


def test_pipeline_helpers():
    assert [pipeline.chunks_for(n, 4) for n in (8, 6, 5, 1)] == [4, 3, 1, 1]
    assert pipeline.bucket(17, 512) == 32 and pipeline.bucket(30, 20) == 30 and pipeline.bucket(17, 24) == 24
    b = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
         "labels": torch.ones(2, 3, dtype=torch.long)}
    p = pipeline.pad_to(b, 5, pad_id=0)
    assert p["input_ids"].shape == (2, 5) and p["labels"][:, 3:].eq(-100).all() and p["attention_mask"][:, 3:].eq(0).all()
    b["attention_mask"] = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="right-padded"):
        pipeline.pad_to(b, 5, pad_id=0)


def test_bad_parallel_settings_fail_before_any_process_starts(tmp_path):
    with pytest.raises(ConfigError, match=r"^micro_batches=3: expected a divisor of batch_size=4"):
        pipeline.check_pipeline_config(tiny(tmp_path, parallel="pipeline", micro_batches=3), 2)
    with pytest.raises(ConfigError, match=r"^micro_batches=2: expected >= nproc \(4\) for schedule='1f1b'"):
        pipeline.check_pipeline_config(tiny(tmp_path, parallel="pipeline", micro_batches=2, schedule="1f1b"), 4)
    with pytest.raises(ConfigError, match=r"^nproc=1: expected >= 2 stages"):
        parallel.launch(tiny(tmp_path, parallel="pipeline", nproc=1), timeout_s=10, log=None)
    with pytest.raises(ConfigError, match=r"^rdzv_endpoint=None: expected host:port"):
        parallel.launch(tiny(tmp_path, parallel="ddp"), nnodes=2, timeout_s=10, log=None)
    with pytest.raises(ConfigError, match=r"^timeout_s=0: expected seconds > 0"):
        parallel.launch(tiny(tmp_path, parallel="ddp"), timeout_s=0, log=None)


def test_cli_builds_the_config_from_flags(tmp_path):
    ap_ns = parallel._parser().parse_args(["--parallel", "pipeline", "--nproc", "2", "--lora-rank", "8",
                                           "--max-steps", "3", "--tasks", "fpb,fiqa", "--label-only-logits", "false"])
    cfg = parallel.config_from_args(ap_ns)
    assert (cfg.parallel, cfg.nproc, cfg.lora.rank, cfg.max_steps, cfg.tasks, cfg.label_only_logits) == \
        ("pipeline", 2, 8, 3, ("fpb", "fiqa"), False)
    with pytest.raises(ConfigError, match=r"^--max-steps 'many': expected an integer"):   # the flag typed
        parallel.config_from_args(parallel._parser().parse_args(["--max-steps", "many"]))
    with pytest.raises(ConfigError, match=r"^--lora-rank \(--rank\) 'four': expected an integer"):
        parallel.config_from_args(parallel._parser().parse_args(["--rank", "four"]))
    out = subprocess.run([sys.executable, "-m", "finlora_utils.parallel", "--parallel", "pipeline", "--nproc", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "error: nproc=1: expected >= 2 stages" in out.stderr   # a user's mistake: 2
    assert "Traceback" not in out.stderr


def test_a_ranks_first_step_time_starts_with_the_training_loop(monkeypatch):
    """step_times_s[0] counted from the monitor's creation, i.e. with the model and data loading (4.9 s for a
    0.06 s step)."""
    clock = iter([100.0, 130.0, 130.5, 131.0])   # created; loop begins 30 s later; two steps of 0.5 s
    monkeypatch.setattr(parallel.time, "time", lambda: next(clock))
    m = parallel.StepMonitor(0)
    m.begin(2, 0)
    m(1, 0.0), m(2, 0.0)
    assert m.times == [0.5, 0.5]


def test_launch_records_the_processes_it_starts(tmp_path, monkeypatch):
    """launch(cfg, nproc=2) trained 2 ranks while the results' config said nproc=1."""
    from collections import deque

    seen = {}

    def fake_torchrun(cmd, timeout_s, env, log):
        seen.update(json.loads(Path(cmd[cmd.index("--config") + 1]).read_text()))
        return 1, deque(["stopped by the test"])

    monkeypatch.setattr(parallel, "_run_bounded", fake_torchrun)
    with pytest.raises(parallel.ParallelRunError):
        parallel.launch(tiny(tmp_path, parallel="ddp"), nproc=2, timeout_s=60, log=None)
    assert seen["nproc"] == 2 and seen["parallel"] == "ddp"
