"""Does 4-bit save memory where it should? Real LoRA training steps on real architectures with random weights.

    .venv/bin/python bench/memory_at_scale.py        # SmolLM2-360M and -1.7B, 4 precisions (8 min on a quiet 2-core Xeon)
    .venv/bin/python bench/memory_at_scale.py --models smollm2-360m --seq-len 32   # a quicker look
    ... --jobs 3     # measure 3 configurations at once (own processes: peaks unchanged, step times contended)

At 135M parameters the embedded model's weights are a small part of a CPU process (torch, the tokenizer and
load-time transients dominate), so the kit's own runs cannot show what 4-bit saves. Peak memory and step time
do not depend on the weights' values, so this bench builds the shipped configs' architectures
(finlora_utils/model_configs/smollm2-360m.json, smollm2-1.7b.json) with random bf16 weights
(models.random_model_dir, saved once as safetensors), loads them the way the kit loads a checkpoint at
16-bit (precision 'auto': bf16 on a CPU with native bf16, else fp32 - the JSON says which), 8-bit (int8),
4-bit (nf4) and 4-bit with double quantization, adds the FinLoRA adapter (q/k/v, rank 8 / 8 / 4 / 4) and
runs the kit's own training step (train.train_step): a warm-up step, then a measured one.
Random weights: never read an accuracy from this. Each configuration runs in a fresh process started with
MALLOC_MMAP_THRESHOLD_=65536 (freed tensors go back to the OS, so VmHWM is a true peak). Per configuration:
  weight_bytes            the loaded model's tensors (quant.loaded_bytes: codes, scales, unquantized rest)
  above_process_bytes     peak RSS during the measured step minus the process's RSS before the model was
                          loaded (python, torch and a throwaway tiny run excluded): weights + adapter +
                          optimizer + activations - what the planner predicts (memory.plan, device='cpu')
  above_loaded_bytes      the same peak minus the RSS after loading, adding LoRA and the warm-up step:
                          what the training phase adds on top of a loaded model
  process_peak_bytes      the process's whole-life peak (VmHWM, load transients included)
  step_s                  wall time of the measured step (1 thread; on a shared machine: noisy)
Writes reports/bench/memory_at_scale.json (results schema, + .csv); the last two printed lines are
`4bit/16bit measured peak ratio at 1.7B: X.XX` (above_process_bytes, 4-bit over 16-bit) and
`planner max abs error at scale: Y.Y%` (over every row, above_process_bytes vs the planner).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = ("smollm2-360m", "smollm2-1.7b")
# (label, kit precision, planner bits, double quant, FinLoRA rank)
CONFIGS = (("16-bit", "auto", 16, False, 8), ("8-bit", "int8", 8, False, 8),
           ("4-bit", "nf4", 4, False, 4), ("4-bit dq", "nf4", 4, True, 4))
PAPER_GB = {"16-bit": 30.91, "4-bit": 8.26}   # FinLoRA's reported GPU memory, Llama-3.1-8B (memory.PAPER_SCENARIOS)


def _vm(field: str) -> int:
    import re

    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def run_one(cfg: dict) -> dict:
    """Measure one configuration in THIS process (the subprocess side)."""
    import torch
    import bitsandbytes  # noqa: F401 - imported before the baseline so its pages are excluded
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from finlora_utils import memory, models, quant, train
    from finlora_utils.config import resolve_precision

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    path = str(models.random_model_dir(cfg["model"]))        # built by the parent: here only read
    precision = resolve_precision(cfg["precision"])
    _steps(models.tiny_model_dir(), precision, cfg["rank"], False, 16, 1)   # lazy imports and kernels: baseline
    gc.collect()
    baseline = memory.baseline_bytes()
    model, tok = models.load_model(path, precision, double_quant=cfg["double_quant"])
    del tok
    weight_bytes = quant.loaded_bytes(model)
    load_hwm = _vm("VmHWM")
    out = _steps(model, precision, cfg["rank"], True, cfg["seq_len"], cfg["batch"])
    return dict(out, precision=precision, weight_bytes=weight_bytes, baseline_bytes=baseline,
                above_process_bytes=out["peak_bytes"] - baseline, above_loaded_bytes=out["peak_bytes"] - out["before_bytes"],
                process_peak_bytes=max(load_hwm, out["peak_bytes"]), load_peak_bytes=load_hwm,
                amp=str(train.amp_dtype(precision, torch.device("cpu"))))


def _steps(model, precision: str, rank: int, loaded: bool, seq_len: int, batch: int) -> dict:
    """Add LoRA to `model` (a loaded model, or a folder to load), run a warm-up and a measured training step."""
    import torch
    from finlora_utils import lora, memory, models, train
    from finlora_utils.config import LoraSettings

    if not loaded:
        model, _ = models.load_model(str(model), precision)
    model.config.use_cache = False
    model = lora.apply_lora(model, LoraSettings(rank=rank, alpha=16, dropout=0.05))
    train.set_grad_checkpointing(model, False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    module = train.TrainModule(model, label_only=False)
    amp = train.amp_dtype(precision, torch.device("cpu"))
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len))
    batch_ = {"input_ids": ids, "labels": ids.clone()}
    n_targets = int(ids[:, 1:].numel())

    def step():
        return train.train_step(module, opt, sched, [batch_], n_targets, amp=amp)

    step()   # warm-up: optimizer states, lazily created kernels and caches
    gc.collect()
    before = memory.baseline_bytes()
    t0 = time.perf_counter()
    _, peak, method = memory.measure_peak(step)
    step_s = time.perf_counter() - t0
    out = dict(peak_bytes=peak, before_bytes=before, method=method, step_s=round(step_s, 2),
               trainable_params=sum(p.numel() for p in params))
    del model, opt, sched, module, step, params
    gc.collect()
    return out


def measure(cfg: dict, timeout: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(cfg["threads"]),
               TOKENIZERS_PARALLELISM="false")
    # its own session: on a kernel with autogroup scheduling each measured process then gets the CPU share
    # of one session instead of splitting the bench's among the concurrent configurations
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout, start_new_session=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {cfg} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def predict(cfg: dict) -> dict:
    from finlora_utils import memory, train

    p = memory.plan(cfg["model"], bits=cfg["bits"], rank=cfg["rank"], seq_len=cfg["seq_len"], batch=cfg["batch"],
                    double_quant=cfg["double_quant"], device="cpu", math_attention=cfg["seq_len"] <= train.SHORT_ATTENTION,
                    warm_process=True)   # run_one trains the tiny model before its baseline
    weights = sum(v for k, v in p.breakdown.items() if k in ("quantized_weights", "quant_constants", "unquantized"))
    return {"predicted_bytes": p.total_bytes, "predicted_weight_bytes": weights, "predicted_breakdown": p.breakdown}


def ratio(rows: list[dict], model: str, key: str = "above_process_bytes") -> float | None:
    by = {r["label"]: r for r in rows if r["model"] == model}
    if "4-bit" not in by or "16-bit" not in by:
        return None
    return by["4-bit"][key] / by["16-bit"][key]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--models", default=",".join(MODELS), help="shipped config names, comma-separated")
    ap.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (default 64)")
    ap.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per measurement (default 2)")
    ap.add_argument("--jobs", type=int, default=1, help="configurations measured at once (default 1)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per configuration before it is abandoned")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench" / "memory_at_scale.json"))
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(json.loads(a.one))))
        return 0
    from finlora_utils.results import git_commit

    commit = git_commit()   # the code the bench starts with (edits while it runs must not relabel it)
    from finlora_utils import models
    from finlora_utils.config import resolve_precision
    from finlora_utils.lora import shipped_models
    from finlora_utils.results import atomic_write_text, write_bench

    names = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in names if m not in shipped_models()]
    if bad or a.seq_len < 2 or a.batch < 1 or a.threads < 1 or a.jobs < 1:
        print(f"error: --models {bad[0]!r}: expected shipped configs ({', '.join(shipped_models())})" if bad else
              "error: --seq-len >= 2, --batch, --threads and --jobs >= 1 expected", file=sys.stderr)
        return 2
    t_start = time.time()
    rows = []
    print(f"16-bit here = precision 'auto' -> {resolve_precision('auto')}; seq {a.seq_len} x batch {a.batch}, "
          f"{a.threads} thread(s); random weights: memory and time only")
    hdr = (f"{'model':<14}{'config':<10}{'weights':>9}{'planner':>9}{'train pk':>10}{'planner':>9}{'err %':>7}"
           f"{'above load':>11}{'process pk':>11}{'step s':>8}")
    for name in names:
        t = time.time()
        models.random_model_dir(name)
        print(f"{name}: random bf16 checkpoint ready ({time.time() - t:.0f} s)", flush=True)
    print("MiB columns: weights (measured | planner), training-phase peak above the process baseline "
          "(measured | planner | error), training-phase peak above the loaded model, whole-process peak\n"
          + hdr, flush=True)
    cfgs = [dict(model=name, label=label, precision=precision, bits=bits, double_quant=dq, rank=rank,
                 seq_len=a.seq_len, batch=a.batch, threads=a.threads)
            for name in names for label, precision, bits, dq, rank in CONFIGS]
    # Each configuration is its own process (its VmHWM is its own), so --jobs > 1 changes the peaks not at
    # all and the step times only through contention for the cores.
    from concurrent.futures import ThreadPoolExecutor

    def attempt(cfg):
        try:
            return measure(cfg, a.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            return e

    # largest model first and its 16-bit run after the quantized ones: concurrent runs share the RAM
    order = sorted(range(len(cfgs)), key=lambda i: (-names.index(cfgs[i]["model"]), cfgs[i]["label"] == "16-bit"))
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        done = dict(zip(order, pool.map(attempt, [cfgs[i] for i in order])))
    measured = [done[i] for i in range(len(cfgs))]
    for cfg, m in zip(cfgs, measured):
        name, label = cfg["model"], cfg["label"]
        if isinstance(m, Exception):
            print(f"{name:<14}{label:<10} failed: {str(m).splitlines()[0][:200]}", flush=True)
            continue
        p = predict(cfg)
        err = 100.0 * (p["predicted_bytes"] - m["above_process_bytes"]) / m["above_process_bytes"]
        row = dict(cfg, **m, **p, error_pct=round(err, 2))
        rows.append(row)
        mib = 2 ** 20
        print(f"{name:<14}{label:<10}{m['weight_bytes'] / mib:>9.0f}{p['predicted_weight_bytes'] / mib:>9.0f}"
              f"{m['above_process_bytes'] / mib:>10.0f}{p['predicted_bytes'] / mib:>9.0f}{err:>+7.1f}"
              f"{m['above_loaded_bytes'] / mib:>11.0f}{m['process_peak_bytes'] / mib:>11.0f}{m['step_s']:>8.2f}",
              flush=True)
    if not rows:
        print("error: no configuration could be measured", file=sys.stderr)
        return 1
    worst = max(abs(r["error_pct"]) for r in rows)
    big = names[-1]
    r_big = ratio(rows, big)
    write_bench(a.out, "memory_at_scale",
                {"models": names, "configs": [c[0] for c in CONFIGS], "seq_len": a.seq_len, "batch": a.batch,
                 "threads": a.threads, "jobs": a.jobs, "targets": "q_proj,k_proj,v_proj"},
                dict(rows=rows, sixteen_bit_precision=resolve_precision("auto"), max_abs_error_pct=worst,
                     ratio_4bit_16bit={n: ratio(rows, n) for n in names},
                     ratio_4bit_16bit_process_peak={n: ratio(rows, n, "process_peak_bytes") for n in names},
                     ratio_4bit_16bit_weights={n: ratio(rows, n, "weight_bytes") for n in names},
                     paper_gb=PAPER_GB, paper_ratio=PAPER_GB["4-bit"] / PAPER_GB["16-bit"],
                     wall_s=round(time.time() - t_start, 1), method=rows[0]["method"],
                     note="above_process = VmHWM during the 2nd training step minus RSS before loading the model; "
                          "above_loaded = the same minus RSS after loading + LoRA + warm-up step; process_peak = the "
                          "process's VmHWM over its life (load transients included)"),
                base_model={"source": "random init (bf16, seed 0) of the shipped configs "
                                      f"{', '.join(names)}: memory and time only, no accuracy"},
                portable=True, commit=commit)
    import csv, io  # noqa: E401 - the CSV twin for spreadsheets
    flat = [{k: v for k, v in r.items() if k != "predicted_breakdown"} for r in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(flat[0]))
    w.writeheader()
    w.writerows(flat)
    atomic_write_text(Path(a.out).with_suffix(".csv"), buf.getvalue())
    print(f"\nresults: {Path(a.out).name} ({time.time() - t_start:.0f} s); FinLoRA (Llama-3.1-8B, GPU): 4-bit "
          f"{PAPER_GB['4-bit']} GB / 16-bit {PAPER_GB['16-bit']} GB = {PAPER_GB['4-bit'] / PAPER_GB['16-bit']:.2f}")
    label = big.removeprefix("smollm2-").upper()
    print(f"4bit/16bit measured peak ratio at {label}: " + (f"{r_big:.2f}" if r_big is not None else "n/a"))
    print(f"planner max abs error at scale: {worst:.1f}%")
    return 0


if __name__ == "__main__":
    from finlora_utils.errors import cli_entry   # a user's mistake: one error line, exit 2

    sys.exit(cli_entry(main)())
