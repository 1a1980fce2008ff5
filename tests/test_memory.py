"""Memory planner: arithmetic sanity, monotonicity, parallel layouts, inverse questions, CLI, and a
live measurement on the tiny model."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from finlora_utils import lora, memory
from finlora_utils.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
GIB = 2 ** 30


def test_planner_does_not_import_torch():
    code = "import sys, finlora_utils.memory as m; m.plan('llama-3.1-8b'); assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("native", [True, False])
def test_activation_dtypes_follow_what_the_kit_trains_in(monkeypatch, native):
    """A bf16 model computes in bf16 even on a CPU without bf16 instructions (the planner once assumed fp32
    there: +56% / +97% on the embedded 16-bit rows of bench/planner_accuracy.py on an AVX2-only CPU);
    quantized models compute in bf16 only where it is native, and autocast runs only there."""
    monkeypatch.setattr(memory.hardware, "cpu_bf16_native", lambda: native)
    assert memory.dtype_bytes(16, "cpu")["act"] == 2
    assert memory.dtype_bytes(4, "cpu")["act"] == (2 if native else 4)
    assert memory.dtype_bytes(16, "cpu")["lora"] == (2 if native else 4)   # peft's fp32 cast kept without autocast
    assert memory.dtype_bytes(8, "cpu")["resid"] == 4                     # load_model: int8 on CPU keeps fp32
    assert memory.dtype_bytes(16, "cpu", compute_bytes=4, base_bytes=4)["act"] == 4   # an fp32 run (train.planned)
    act = {b: memory.plan("smollm2-135m", bits=b, rank=8, seq_len=512, device="cpu").breakdown["activations"]
           for b in (16, 4)}
    if native:   # both compute in bf16 under autocast
        assert act[16] == act[4]
    else:        # bf16 activations vs fp32 ones: about half, less the fp32 norms and LoRA inputs
        assert 0.5 * act[4] < act[16] < 0.75 * act[4]
    # int8 on CPU keeps the tied embedding / lm_head fp32; under autocast the head's matmul saves a bf16 copy
    # of it for the input gradient (bench/memory_at_scale.py: -12.0 % at SmolLM2-360M int8 without this term)
    assert memory.dtype_bytes(8, "cpu")["head"] == (2 if native else 0)
    assert memory.dtype_bytes(16, "cpu")["head"] == memory.dtype_bytes(4, "cpu")["head"] == 0
    cfg = lora.model_config("smollm2-360m")
    kw = dict(bits=8, rank=8, seq_len=64, device="cpu")
    with_head = memory.plan("smollm2-360m", **kw).breakdown["logits"]
    without = memory.plan("smollm2-360m", autocast=False, **kw).breakdown["logits"]
    assert with_head - without == (cfg["vocab_size"] * cfg["hidden_size"] * 2 if native else 0)


def test_weights_follow_the_formats():
    p16, p8, p4 = (memory.plan("llama-3.1-8b", bits=b, rank=8) for b in (16, 8, 4))
    n_proj = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    assert p16.breakdown["quantized_weights"] == 2 * n_proj
    assert p8.breakdown["quantized_weights"] == n_proj
    assert p4.breakdown["quantized_weights"] == n_proj // 2
    assert p4.breakdown["quant_constants"] == 4 * n_proj // 64                 # 0.5 bit / param
    dq = memory.plan("llama-3.1-8b", bits=4, double_quant=True).breakdown["quant_constants"]
    assert abs(8 * dq / n_proj - (8 / 64 + 32 / (64 * 256))) < 1e-3           # 0.127 bit / param
    # embeddings + untied lm_head in bf16: 2 x 128256 x 4096 x 2 bytes ~ 2.1 GB
    assert abs(p4.breakdown["unquantized"] - 2 * 128256 * 4096 * 2) < 2e6
    assert p4.trainable_params == 4_718_592 and p4.rank == 8
    assert memory.plan("llama-3.1-8b", bits=4).rank == 4   # the paper's default for 4-bit
    assert p4.total_bytes < p8.total_bytes < p16.total_bytes


@pytest.mark.parametrize("kw", [dict(bits=4), dict(bits=8, grad_checkpointing=True),
                                dict(bits=16, label_only_logits=True), dict(bits=4, device="cpu")])
def test_monotone_in_rank_seq_len_and_batch(kw):
    base = dict(model="smollm2-135m", rank=8, seq_len=256, batch=2, **kw)
    for key, values in (("rank", (1, 4, 8, 64, 256)), ("seq_len", (16, 128, 512, 2048, 8192)),
                        ("batch", (1, 2, 4, 16))):
        totals = [memory.plan(**{**base, key: v}).total_bytes for v in values]
        assert totals == sorted(totals) and totals[0] < totals[-1], (key, totals)


def test_checkpointing_and_label_only_logits_save_memory_at_long_sequences():
    kw = dict(model="llama-3.1-8b", bits=4, seq_len=4096, batch=4)
    full = memory.plan(**kw)
    assert memory.plan(**kw, grad_checkpointing=True).total_bytes < full.total_bytes
    lo = memory.plan(**kw, label_only_logits=True)
    assert lo.breakdown["logits"] < full.breakdown["logits"] / 10


def test_ddp_and_pipeline_layouts():
    single = memory.plan("llama-3.1-8b", bits=4, seq_len=1024, batch=4)
    ddp = memory.plan("llama-3.1-8b", bits=4, seq_len=1024, batch=4, gpus=4, parallel="ddp", zero1=True)
    assert len(ddp.per_device) == 4 and ddp.summed_bytes == 4 * ddp.total_bytes
    assert ddp.breakdown["optimizer"] == -(-single.breakdown["optimizer"] // 4)   # ZeRO-1 shards states
    pipe = memory.plan("llama-3.1-8b", bits=4, seq_len=1024, batch=4, gpus=4, parallel="pipeline", micro_batches=4)
    assert sum(pipe.layers_per_device) == 32 and len(pipe.per_device) == 4
    assert pipe.total_bytes < single.total_bytes
    # the first/last stages hold embeddings / lm_head, so they get fewer layers
    assert pipe.layers_per_device[0] < max(pipe.layers_per_device)


def test_pipeline_split_weighs_each_stages_in_flight_activations():
    """1F1B keeps min(m, p - s) micro-batches in flight on stage s: an early stage's layer costs more, so it
    gets fewer layers (the split once balanced weights only: SmolLM2-1.7B's [13, 11] left stage 0 0.35 GiB
    heavier, bench/parallel_scaling.py)."""
    assert memory.pipeline_split(24, 2, layer_costs=[1.5, 1.0]) == [9, 15]   # loads 13.5 and 15
    kw = dict(bits=4, rank=4, seq_len=128, batch=4, micro_batches=2, gpus=2, parallel="pipeline", device="cpu",
              label_only_logits=True)
    one_f, gpipe = (memory.plan("smollm2-1.7b", schedule=s, **kw) for s in ("1f1b", "gpipe"))
    assert one_f.layers_per_device[0] < one_f.layers_per_device[1]
    assert gpipe.layers_per_device == [12, 12]   # every stage holds all micro-batches: weights decide
    for p in (one_f, gpipe):   # balanced: the two stages within 5 % of each other
        a, b = (d["total_bytes"] for d in p.per_device)
        assert abs(a - b) < 0.05 * max(a, b), p.per_device
    with pytest.raises(ConfigError, match="layer_costs"):
        memory.pipeline_split(24, 2, layer_costs=[1.0])


def test_pipeline_split():
    assert memory.pipeline_split(32, 4) == [8, 8, 8, 8]
    s = memory.pipeline_split(30, 4)
    assert sum(s) == 30 and max(s) - min(s) <= 1 and s[0] == 7 and s[-1] == 7   # extras to the middle
    s = memory.pipeline_split(32, 4, first_extra=2, last_extra=4)
    assert sum(s) == 32 and s[0] < s[1] and s[-1] < s[1]
    assert memory.pipeline_split(5, 1) == [5]
    with pytest.raises(ConfigError, match="^n_layers=2"):
        memory.pipeline_split(2, 4)


def test_max_seq_len_that_fits_is_tight():
    kw = dict(model="llama-3.1-8b", bits=4, batch=4, grad_checkpointing=True)
    s = memory.max_seq_len_that_fits(24, **kw)
    assert 16 < s < 131072
    assert memory.plan(seq_len=s, **kw).total_bytes <= 24 * GIB < memory.plan(seq_len=s + 1, **kw).total_bytes
    assert memory.max_seq_len_that_fits(80, **kw) > s
    assert memory.max_seq_len_that_fits(1, **kw) == 0     # the weights alone do not fit
    b = memory.max_batch_that_fits(24, "llama-3.1-8b", bits=4, seq_len=512)
    assert memory.plan("llama-3.1-8b", bits=4, seq_len=512, batch=b).total_gib <= 24
    assert memory.plan("llama-3.1-8b", bits=4, seq_len=512, batch=b + 1).total_gib > 24


def test_max_batch_of_a_pipeline_is_a_multiple_of_its_micro_batches():
    kw = dict(bits=4, seq_len=512, gpus=2, parallel="pipeline", micro_batches=4, schedule="1f1b")
    b = memory.max_batch_that_fits(24, "llama-3.1-8b", **kw)
    assert b >= 4 and b % 4 == 0
    assert memory.plan("llama-3.1-8b", batch=b, **kw).total_gib <= 24 < memory.plan("llama-3.1-8b", batch=b + 4,
                                                                                    **kw).total_gib
    # without a pipeline the micro-batches split nothing: the same answer as without them
    single = dict(bits=4, seq_len=512)
    assert memory.max_batch_that_fits(24, "llama-3.1-8b", micro_batches=3, **single) == \
        memory.max_batch_that_fits(24, "llama-3.1-8b", **single)


def test_a_shared_prefix_plans_fewer_rows_and_the_per_example_keys():
    kw = dict(model="smollm2-135m", bits=4, rank=4, seq_len=64, batch=8, label_only_logits=True, device="cpu",
              math_attention=True)
    padded, packed = memory.plan(**kw), memory.plan(**kw, shared_prefix=24)
    assert memory.plan(**kw, shared_prefix=0).total_bytes == padded.total_bytes
    act = padded.breakdown["activations"]
    # 7 of 8 prefixes are not stored: ~7 * 24 / 512 of the rows, less the per-example copies of k and v
    assert 0.55 * act < packed.breakdown["activations"] < 0.8 * act
    assert packed.breakdown["quantized_weights"] == padded.breakdown["quantized_weights"]
    with pytest.raises(ConfigError, match=r"^shared_prefix=64: expected 0 <= shared_prefix < seq_len \(64\)"):
        memory.plan(**kw, shared_prefix=64)
    # pipeline chunks pack too (pipeline.micro_batch): 4 chunks of 2, so each stores 1 of its 2 prefixes
    pipe = dict(kw, gpus=2, parallel="pipeline", micro_batches=4, schedule="1f1b")
    chunked, chunked_packed = memory.plan(**pipe), memory.plan(**pipe, shared_prefix=24)
    saved = [1 - q["breakdown"]["activations"] / d["breakdown"]["activations"]
             for d, q in zip(chunked.per_device, chunked_packed.per_device)]
    # a chunk of 2 skips 1 of 2 prefixes (24 of 128 rows), 8 rows in one micro-batch 7 of 8 (168 of 512)
    assert all(0.1 < x < 0.7 * (1 - packed.breakdown["activations"] / act) for x in saved), saved


@pytest.mark.parametrize("kw,msg", [
    (dict(model="no-such-model"), r"^model='no-such-model': unknown model; expected one of"),
    (dict(rank=0), r"^rank=0: expected an integer > 0"),
    (dict(bits=3), r"^bits=3: expected one of 16, 8, 4"),
    (dict(targets=("q_proj", "c_attn")), r"^targets='c_attn'"),
    (dict(parallel="zero"), r"^parallel='zero'"),
])
def test_bad_input_names_the_parameter(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        memory.plan(**{"model": "llama-3.1-8b", **kw})


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "finlora_utils.memory", "estimate", *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_json_and_fit():
    out = _cli("--model", "meta-llama/Llama-3.1-8B-Instruct", "--bits", "4", "--rank", "4", "--seq-len", "512",
               "--batch", "4", "--grad-checkpointing", "--gpus", "4", "--parallel", "ddp", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["total_gib"] > 5 and len(d["per_device"]) == 4 and d["trainable_params"] == 2_359_296
    fit = _cli("--model", "llama-3.1-8b", "--bits", "4", "--batch", "4", "--fit", "24", "--json")
    assert fit.returncode == 0 and json.loads(fit.stdout)["max_seq_len"] > 0
    # a pipeline's schedule reaches the planner: 1F1B keeps fewer micro-batches in flight than GPipe
    pipe = ("--model", "llama-3.1-8b", "--gpus", "2", "--parallel", "pipeline", "--batch", "8", "--micro-batches", "4")
    peaks = {s: json.loads(_cli(*pipe, "--schedule", s, "--json").stdout)["total_gib"] for s in ("gpipe", "1f1b")}
    assert peaks["1f1b"] < peaks["gpipe"], peaks
    fit = _cli(*pipe, "--schedule", "1f1b", "--fit", "24")   # the batch search starts at one micro-batch each
    assert fit.returncode == 0, fit.stderr
    assert re.fullmatch(r"24 GiB: max seq len \d+ at batch 8; max batch (\d+) at seq len 512\n", fit.stdout)
    assert int(fit.stdout.split("max batch ")[1].split()[0]) % 4 == 0
    # without --batch the seq-len search runs at one row per micro-batch, the smallest batch a pipeline splits
    bare = _cli("--model", "llama-3.1-8b", "--gpus", "2", "--parallel", "pipeline", "--micro-batches", "4",
                "--fit", "24")
    assert bare.returncode == 0 and " at batch 4; max batch " in bare.stdout, bare.stderr


@pytest.mark.parametrize("args,start", [
    (("--model", "nope"), "error: model='nope'"), (("--rank", "0"), "error: rank=0"),
    (("--bits", "3"), "error: bits=3"), (("--targets", "q_proj,c_attn"), "error: targets='c_attn'"),
])
def test_cli_bad_input_is_one_line_without_traceback(args, start):
    out = _cli(*args)
    assert out.returncode != 0
    assert out.stderr.startswith(start) and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


_HELD_HEAP = """
import ctypes, torch
from finlora_utils import lora, memory
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 32 * 2 ** 20)   # M_MMAP_THRESHOLD: 8 MiB blocks come from the heap
libc.mallopt(-1, 2 ** 30)        # M_TRIM_THRESHOLD: glibc keeps what is freed
blocks = [torch.ones(8 * 2 ** 20 // 4) for _ in range(12)]   # 96 MiB of heap
pin = torch.ones(1000)           # a live block above them
del blocks                       # 96 MiB free but resident: a 50 MiB request reuses it
base = memory.baseline_bytes()
_, peak, method = memory.measure_peak(lambda: float(torch.ones(50 * 2 ** 20 // 4)[0]))
print(method, (peak - base) / 2 ** 20)
"""


_HEAP_MODE = """
import sys, torch
from finlora_utils import memory
memory.set_heap_mode(sys.argv[1])
blocks = [torch.ones(8 * 2 ** 20 // 4) for _ in range(12)]   # 96 MiB in 8 MiB blocks
pin = torch.ones(2 ** 20 // 4)   # a live 1 MiB block above them: the heap cannot give them back from its top
before = memory.current_bytes()
del blocks
print((before - memory.current_bytes()) / 2 ** 20)
"""


def test_heap_mode_exact_returns_freed_blocks_and_fast_keeps_them():
    """exact: freed tensors leave the resident set (VmHWM is the live-tensor peak the planner predicts);
    fast: glibc keeps them for reuse (full speed; the peak includes them)."""
    freed = {}
    for mode in ("exact", "fast"):
        out = subprocess.run([sys.executable, "-c", _HEAP_MODE, mode], capture_output=True, text=True, cwd=ROOT,
                             timeout=120, env={k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"})
        assert out.returncode == 0, out.stderr[-2000:]
        freed[mode] = float(out.stdout)
    assert freed["exact"] >= 90 and freed["fast"] <= 10, freed
    with pytest.raises(ConfigError, match="^cpu_memory="):
        memory.set_heap_mode("quick")


def test_measure_peak_sees_a_transient_allocation():
    import torch

    def fn():
        x = torch.ones(50 * 2 ** 20 // 4)   # 50 MiB, touched, freed on return
        return float(x[0])

    base = memory.baseline_bytes()
    result, peak, method = memory.measure_peak(fn)
    assert result == 1.0 and method.startswith("vmhwm")
    assert peak - base >= 45 * 2 ** 20


def test_measure_peak_sees_an_allocation_that_reuses_held_heap():
    """What failed in CI after other tests had churned the heap: glibc held a large freed block, the
    allocation reused it without raising RSS, and the peak was missed (fixed by malloc_trim first)."""
    out = subprocess.run([sys.executable, "-c", _HELD_HEAP], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    method, seen = out.stdout.split()
    assert method.startswith("vmhwm") and float(seen) >= 45, f"{seen} MiB seen of a 50 MiB allocation"


@pytest.mark.slow
def test_planner_matches_a_live_measurement_on_the_tiny_model():
    """One real LoRA training step (the kit's train_step) measured in a fresh process (true peak)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import planner_accuracy as pa

    cfg = dict(model="tiny-random-llama", bits=4, rank=8, seq_len=512, batch=2, grad_checkpointing=False,
               label_only_logits=False)
    m = pa.measure(cfg)
    pred = pa.predict(cfg)
    assert m["method"] == "vmhwm"
    assert abs(pred - m["measured_bytes"]) / m["measured_bytes"] < 0.15, (pred, m)


# The smoke study's notebook-03 trainings (tiny model, FPB, batch 4, 16 examples, 4 steps; 16-bit r8,
# int8 r8, nf4 r4), trained one after another in ONE fresh process as the notebook's kernel trains them.
_SMOKE_03 = r"""
import json
from finlora_utils import train
from finlora_utils.config import LoraSettings, TrainConfig
for precision, rank in (("auto", 8), ("int8", 8), ("nf4", 4)):
    c = TrainConfig(model="tiny-random-llama", tasks=("fpb",), precision=precision, batch_size=4, max_seq_len=256,
                    max_train_samples=16, lora=LoraSettings(rank=rank, alpha=16.0, dropout=0.05), lr=1e-3,
                    save_every=0, output_dir=OUT + "/runs")
    ti = train.train(c, results_dir=OUT + "/results", force=True, log=lambda *a, **k: None)["train_info"]
    print(json.dumps(dict(precision=precision, measured=ti["peak_mem_bytes"], method=ti["peak_mem_method"],
                          planned=ti["memory_plan"]["predicted_peak_mem_bytes"],
                          warm=ti["memory_plan"]["warm_process"], new_shapes=ti["memory_plan"]["new_shapes"])))
"""
SMOKE_TOLERANCE, SMOKE_TOLERANCE_MIB = 0.10, 32.0


@pytest.mark.slow
def test_planner_predicts_the_smoke_studys_training_peaks(tmp_path):
    """Every smoke-study training run's peak training memory (memory.PEAK_DEFINITION, as train_info
    records it) is within 10 % or 32 MiB, whichever is larger, of the planner's prediction that
    train_info.memory_plan records.

    At this size the floor is what decides, and why it is 32 MiB: the tiny model's own tensors are ~9 MiB,
    under the CPU runtime (kernel pages, MKL / oneDNN scratch, and ~9 MiB of kernels per new batch shape in
    bf16: memory.CPU_SHAPE_BYTES), which differs between machines. Measured, same runs, fresh processes, with
    the planner counting shapes (Intel Xeon AMX, 2026-12-02): 16-bit 58.4 / 58.2 MiB vs 66.2 planned, int8
    17.8-20.6 vs 14.7, nf4 28.9-30.3 vs 28.2 (it builds only its rank's adapter kernels: half a shape each).
    Before shapes were counted the same first run cost 36.5 MiB on that Xeon in fp32 and 74.8 on CI's
    machine (60.2 planned). So ~30 MiB is the runtime's spread between machines, and this test catches
    planner errors above that (a wrong term in the tensors); the planner's 10 % is checked at sizes where
    tensors dominate (bench/planner_accuracy.py, test_planner_matches_a_live_measurement_on_the_tiny_model).
    Slow: ~1 min quiet, ~4 min on a busy 2-core machine (three tiny trainings in one fresh process).
    """
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")   # fast on a shared machine
    env.pop("MALLOC_MMAP_THRESHOLD_", None)   # as in a notebook kernel: the kit pins the threshold itself
    run = subprocess.run([sys.executable, "-c", f"OUT = {str(tmp_path)!r}\n" + _SMOKE_03], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(ln) for ln in run.stdout.splitlines() if ln.startswith("{")]
    assert [r["precision"] for r in rows] == ["auto", "int8", "nf4"]
    assert [r["warm"] for r in rows] == [False, True, True]   # the first run pays the runtime's one-off caches
    # the first run builds every shape's kernels; int8 r8 meets the same lengths with the same rank (none new);
    # nf4 r4 builds only its own adapter's kernels for them: half a shape each (memory.CPU_ADAPTER_SHARE)
    first = rows[0]["new_shapes"]
    assert first >= 1 and rows[1]["new_shapes"] == 0 and rows[2]["new_shapes"] == first * memory.CPU_ADAPTER_SHARE
    assert all(r["method"] == "vmhwm" for r in rows)
    seen = "; ".join(f"{r['precision']}: planner {r['planned'] / 2**20:.1f} MiB vs measured "
                     f"{r['measured'] / 2**20:.1f} MiB" for r in rows)   # all three, for the next look at CI
    for r in rows:
        diff = r["planned"] - r["measured"]
        assert abs(diff) <= max(SMOKE_TOLERANCE * r["measured"], SMOKE_TOLERANCE_MIB * 2 ** 20), seen


def test_runtime_term_counts_new_batch_shapes_per_compute_width_and_rank():
    """A CPU plan's runtime: the fresh-process constant plus CPU_SHAPE_BYTES per batch shape the process has
    not trained on; fp32 keeps no per-shape kernels; without a count, the older constants."""
    kw = dict(model="tiny-random-llama", bits=16, rank=8, seq_len=64, batch=4, device="cpu")
    one, six = (memory.plan(**kw, new_shapes=n).breakdown["runtime"] for n in (1, 6))
    assert six - one == 5 * memory.CPU_SHAPE_BYTES[2] and one == memory.CPU_RUNTIME_FRESH[2] + memory.CPU_SHAPE_BYTES[2]
    warm = memory.plan(**kw, new_shapes=0, warm_process=True).breakdown["runtime"]
    assert warm == memory.CPU_RUNTIME_WARM
    fp32 = dict(kw, compute_bytes=4, base_bytes=4)
    assert memory.plan(**fp32, new_shapes=1).breakdown["runtime"] == memory.plan(**fp32, new_shapes=6).breakdown["runtime"]
    assert memory.plan(**kw).breakdown["runtime"] == memory.CPU_TRAIN_RUNTIME   # no count: a typical run
    # on a GPU no per-shape term; a process's first training allocates the BLAS workspaces (measured on an H200)
    assert memory.plan(**dict(kw, device="cuda"), new_shapes=6).breakdown["runtime"] == memory.CUDA_FIRST_RUNTIME
    assert memory.plan(**dict(kw, device="cuda"), new_shapes=6, warm_process=True).breakdown["runtime"] == 0
    # a pipeline rank keeps more kernels per new shape (measured), each rank its own
    pipe = dict(kw, gpus=2, parallel="pipeline")
    p1, p6 = (memory.plan(**pipe, new_shapes=n).per_device[0]["breakdown"]["runtime"] for n in (1, 6))
    assert p6 - p1 == 5 * memory.CPU_PIPELINE_SHAPE_BYTES[2] > 5 * memory.CPU_SHAPE_BYTES[2]
    # the stored shape carries the count, so a report re-asks the planner the same question
    cfg = dict(model="tiny-random-llama", precision="bf16", lora=dict(rank=8))
    shape = dict(seq_len=64, batch=4, device="cpu", new_shapes=2.5)
    assert memory.run_plan(cfg, shape).breakdown["runtime"] == memory.plan(**kw, new_shapes=2.5).breakdown["runtime"]


def test_unseen_shapes_remembers_what_this_process_built():
    # lengths and a rank no other test trains with: the record is this process's, shared with the suite's runs
    a, b, c = 100_003, 100_011, 100_019
    rank = 9973
    assert memory.unseen_shapes([a, b, b], 2, rank) == 2.0           # not remembered without remember=True
    assert memory.unseen_shapes([a, b, b], 2, rank, remember=True) == 2.0
    assert memory.unseen_shapes([b, a], 2, rank) == 0.0              # built: free the second time
    share = memory.CPU_ADAPTER_SHARE                                  # another rank: only the adapter's kernels
    assert memory.unseen_shapes([a, b], 2, rank + 1) == 2 * share
    assert memory.unseen_shapes([a, c], 4, rank) == 2.0              # fp32 kernels are others
    assert memory.unseen_shapes([c], 2, rank) == 1.0
    # packed layouts: a length with another shared prefix is another shape; a padded one is prefix 0
    assert memory.unseen_shapes([(a, 0), (a, 17), (a, 25), (a, 25)], 2, rank) == 2.0
    assert memory.unseen_shapes([(b, 25)], 2, rank, remember=True) == 1.0
    assert memory.unseen_shapes([(b, 25), b], 2, rank) == 0.0


def test_breakdown_fits_and_paper_tables():
    assert [c[0] for c in memory.PAPER_CONFIGS] == ["16-bit r8", "8-bit r8", "4-bit r4"]
    b = memory.breakdown_table("llama-3.1-8b", seq_len=1024, batch=2)
    assert list(b.config) == ["16-bit r8", "16-bit r8 ckpt", "8-bit r8", "8-bit r8 ckpt", "4-bit r4", "4-bit r4 ckpt"]
    parts = [c for c in b.columns if c not in ("config", "total_GiB")]
    assert b[parts].sum(axis=1).tolist() == pytest.approx(b.total_GiB.tolist())   # the stack adds up to the plan
    p = memory.plan("llama-3.1-8b", bits=4, rank=4, seq_len=1024, batch=2, grad_checkpointing=True, double_quant=True)
    assert b.total_GiB[5] == pytest.approx(p.total_gib) and not b.isna().any().any()
    f = memory.fits_table([24, 80], "llama-3.1-8b", configs=memory.PAPER_CONFIGS[2:], batch=2)
    assert list(f.columns) == ["config", "ckpt", "label_only_logits", "24 GiB", "80 GiB"] and len(f) == 3
    assert (f["24 GiB"] <= f["80 GiB"]).all() and f["24 GiB"].is_monotonic_increasing   # each saver adds length
    assert f["24 GiB"][0] == memory.max_seq_len_that_fits(24, "llama-3.1-8b", bits=4, rank=4, batch=2,
                                                          double_quant=True, label_only_logits=False)
    paper = memory.paper_comparison_table()
    assert list(dict.fromkeys(paper.scenario)) == list(memory.PAPER_SCENARIOS)
    assert len(paper) == len(memory.PAPER_SCENARIOS) * len(memory.PAPER_MEMORY)


def test_8bit_adamw_keeps_fp32_state_for_tensors_below_bitsandbytes_minimum():
    """bitsandbytes' min_8bit_size: the embedded model's LoRA tensors (576 x 4 and smaller) all stay fp32, so 8-bit
    AdamW saves nothing there; Llama-3.1-8B's (4096 x 4 and up) are all 8-bit."""
    import inspect

    import bitsandbytes as bnb

    assert inspect.signature(bnb.optim.PagedAdamW8bit).parameters["min_8bit_size"].default == \
        memory.BNB_MIN_8BIT_SIZE
    state = {m: {o: memory.plan(m, bits=4, rank=4, optimizer=o, device="cuda").breakdown["optimizer"]
                 for o in ("adamw", "adamw_8bit", "paged_adamw_8bit")} for m in ("smollm2-135m", "llama-3.1-8b")}
    small, large = state["smollm2-135m"], state["llama-3.1-8b"]
    assert small["adamw_8bit"] == small["paged_adamw_8bit"] == small["adamw"] > 0, small
    assert large["adamw_8bit"] == large["paged_adamw_8bit"] == large["adamw"] // 4, large
    assert memory.optimizer_state_bytes([(4, 1024), (1024, 4), (4, 1000)], "adamw_8bit") == 2 * 4096 * 2 + 4000 * 8


def test_a_ddp_plan_says_its_batch_is_each_ranks():
    """train's batch_size is global, estimate's --batch is per rank under DDP: the table says which."""
    head = memory.plan("llama-3.1-8b", bits=4, seq_len=512, batch=4, gpus=4, parallel="ddp").table().splitlines()[0]
    assert "x batch 4 per rank (global 16)" in head
    assert "per rank" not in memory.plan("llama-3.1-8b", bits=4, seq_len=512, batch=4).table()
