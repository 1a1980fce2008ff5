"""How close is the memory planner to a measured peak? A grid of real LoRA training steps on CPU.

    .venv/bin/python bench/planner_accuracy.py            # controlled grid + the study's runs
    .venv/bin/python bench/planner_accuracy.py --quick    # tiny model only: its grid rows and the smoke study's runs
    .venv/bin/python bench/planner_accuracy.py --study-steps 100   # the cpu study's 03 runs at full length

Two parts. The controlled grid (below) measures single steps at chosen shapes. The study part runs the
study's own trainings (notebooks 03 and 04 of the smoke and cpu presets: FPB data, batch 4, 16-bit / int8
/ nf4, single process, DDP and 1F1B pipeline ranks) through the kit's own entry points (train.train,
parallel.launch) and compares what they record: train_info.peak_mem_bytes (the kit's one definition,
memory.PEAK_DEFINITION: training phase above the loaded process, most loaded rank) against
train_info.memory_plan (the planner at the run's costliest batch shape).

Each configuration runs in a fresh subprocess started with MALLOC_MMAP_THRESHOLD_=65536, so freed
tensors go back to the OS and the kernel's RSS high-water mark (VmHWM, reset via
/proc/self/clear_refs) is a true peak. In that subprocess: import everything, record the baseline
RSS, load the model, add LoRA, run one warm-up step (forward + backward + AdamW step), then measure
the second step. measured = peak - baseline, i.e. the process's python/torch/library pages are
excluded; the planner is asked for the same thing (device="cpu").
Writes reports/results/planner_accuracy.json (+ .csv) and prints, as its last line,
`planner max abs error: X%`.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PRECISION = {16: "bf16", 8: "int8", 4: "nf4"}


def grid(quick: bool) -> list[dict]:
    rows = []
    # tiny: the logits (vocab 49152 over a 64-wide model) dominate; checks the logits term
    for bits, seq, ckpt in ((16, 256, False), (8, 1024, True), (4, 1024, False), (4, 256, True), (16, 1024, True)):
        rows.append(dict(model="tiny-random-llama", bits=bits, rank=8, seq_len=seq, batch=2,
                         grad_checkpointing=ckpt, label_only_logits=False))
    rows.append(dict(model="tiny-random-llama", bits=4, rank=64, seq_len=1024, batch=2,
                     grad_checkpointing=False, label_only_logits=True))
    if quick:
        return rows
    # embedded SmolLM2-135M: layer activations dominate
    for bits, rank, seq, ckpt, lol in ((16, 8, 256, False, False), (8, 8, 256, False, True),
                                       (4, 4, 256, False, False), (4, 4, 256, False, True),
                                       (4, 16, 512, False, True), (4, 4, 512, True, False),
                                       (16, 8, 512, True, True), (8, 8, 512, True, False),
                                       (4, 8, 128, False, True)):   # <= 128 tokens: math attention
        rows.append(dict(model="embedded", bits=bits, rank=rank, seq_len=seq, batch=1 if seq > 128 else 4,
                         grad_checkpointing=ckpt, label_only_logits=lol))
    return rows


LABEL_TOKENS = 16  # label-only rows: loss on the last 16 positions (the planner's label_tokens)


def study_grid(quick: bool, steps: int) -> list[dict]:
    """The study's trainings (presets smoke / cpu, notebooks 03 and 04), `steps` optimizer steps each."""
    runs = []
    for model, seq03, seq04 in (("tiny-random-llama", 256, 96), ("embedded", 512, 128))[:1 if quick else 2]:
        for precision, rank in (("auto", 8), ("int8", 8), ("nf4", 4)):   # 03: FinLoRA's three
            runs.append(dict(model=model, notebook="03", precision=precision, rank=rank, max_seq_len=seq03,
                             parallel="none", nproc=1, steps=steps))
        for parallel, nproc in (("none", 1), ("ddp", 2), ("pipeline", 2)):   # 04: nf4 r4, 1f1b, 2 micro-batches
            runs.append(dict(model=model, notebook="04", precision="nf4", rank=4, max_seq_len=seq04,
                             parallel=parallel, nproc=nproc, steps=min(steps, 12)))
    return runs


def study_config(run: dict, out: Path):
    from finlora_utils.config import LoraSettings, TrainConfig

    tag = "single" if run["parallel"] == "none" else f"{run['parallel']}{run['nproc']}"
    return TrainConfig(model=run["model"], tasks=("fpb",), precision=run["precision"],
                       lora=LoraSettings(rank=run["rank"], alpha=16.0, dropout=0.05), batch_size=4,
                       max_steps=run["steps"], max_train_samples=4 * run["steps"], max_seq_len=run["max_seq_len"],
                       lr=1e-3, seed=0, save_every=0, parallel=run["parallel"], nproc=run["nproc"], micro_batches=2,
                       schedule="1f1b", variant_tag=f"nb{run['notebook']}_{tag}", output_dir=str(out / "runs"))


def measure_study(run: dict, out: Path, timeout: int = 1800) -> dict:
    """One study training through the kit's own entry point; its recorded peaks and plan."""
    from finlora_utils import parallel

    config = study_config(run, out)
    if run["notebook"] == "03":   # 03 trains in its kernel: train.train in a plain process; 04 under torchrun
        # one thread like each 04 rank: on a shared machine more OpenMP threads than free cores spin for ages
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
        env.pop("MALLOC_MMAP_THRESHOLD_", None)   # as in a notebook kernel: the kit pins it itself (mallopt)
        proc = subprocess.run([sys.executable, __file__, "--train-one", json.dumps(config.to_dict(), default=list),
                               str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"training {run} failed:\n{proc.stderr[-2000:]}")
        ti = json.loads(lines[-1])
    else:
        ti = parallel.launch(config, timeout_s=timeout, results_dir=out / "results", force=True, log=None,
                             threads_per_rank=1)["train_info"]
    ranks = [r["peak_mem_bytes"] for r in (ti.get("parallel") or {}).get("ranks") or []] or [ti["peak_mem_bytes"]]
    plan = ti["memory_plan"]
    return dict(measured_bytes=max(ranks), rank_bytes=ranks, predicted_bytes=plan["predicted_peak_mem_bytes"],
                predicted_per_device=plan["predicted_per_device"], seq_len=plan["seq_len"], batch=plan["batch"],
                math_attention=plan["math_attention"], method=ti["peak_mem_method"],
                process_peak_bytes=ti["process_peak_mem_bytes"], baseline_bytes=ti["baseline_mem_bytes"],
                steps=ti["steps"], wall_s=round(ti["wall_s"], 1))


def train_one(config_json: str, out: str) -> dict:
    """The subprocess side of measure_study for a single-process run."""
    from finlora_utils import train
    from finlora_utils.config import TrainConfig

    res = train.train(TrainConfig.from_dict(json.loads(config_json)), results_dir=Path(out) / "results", force=True,
                      log=lambda *a, **k: None)
    return res["train_info"]


def run_one(cfg: dict) -> dict:
    """Measure one configuration in THIS process (the subprocess side)."""
    import torch
    import bitsandbytes  # noqa: F401 - imported before the baseline so its pages are excluded
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from finlora_utils import memory

    torch.set_num_threads(1)
    torch.manual_seed(0)
    # A throwaway tiny run first: lazy imports, kernels and thread pools land in the baseline.
    run_steps(dict(cfg, model="tiny-random-llama", seq_len=160, batch=1))
    gc.collect()
    baseline = memory.baseline_bytes()
    out = run_steps(cfg)
    out["measured_bytes"] = out.pop("peak_bytes") - baseline
    out["static_bytes"] = out.pop("before_bytes") - baseline
    return dict(out, baseline_bytes=baseline)


def _own_memory(model) -> None:
    """Copy unquantized weights out of the safetensors mmap. An fp32 weight loaded zero-copy keeps
    the whole file mapped, and every page touched while quantizing the rest stays in RSS (int8 on
    CPU: +300 MiB of clean file pages a GPU run never holds)."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if type(p).__name__ == "Parameter":
                p.data = p.data.clone()


def run_steps(cfg: dict) -> dict:
    """Load, add LoRA, run the kit's own training step twice (finlora_utils.train), measure the 2nd."""
    import torch
    from finlora_utils import lora, memory, models, train
    from finlora_utils.config import LoraSettings

    model, tok = models.load_model(cfg["model"], PRECISION[cfg["bits"]])
    del tok  # the tokenizer is not part of training memory
    _own_memory(model)
    model.config.use_cache = False
    model = lora.apply_lora(model, LoraSettings(rank=cfg["rank"], alpha=16, dropout=0.05))
    train.set_grad_checkpointing(model, cfg["grad_checkpointing"])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    module = train.TrainModule(model, label_only=cfg["label_only_logits"])
    amp = train.amp_dtype(PRECISION[cfg["bits"]], torch.device("cpu"))
    ids = torch.randint(0, model.config.vocab_size, (cfg["batch"], cfg["seq_len"]))
    labels = ids.clone()
    if cfg["label_only_logits"]:   # a prompt with a LABEL_TOKENS-long answer at the end
        labels[:, :-LABEL_TOKENS] = train.IGNORE
    n_targets = int((labels[:, 1:] != train.IGNORE).sum())
    batch = {"input_ids": ids, "labels": labels}

    def step():
        return train.train_step(module, opt, sched, [batch], n_targets, amp=amp)

    t0 = time.time()
    step()   # warm-up: optimizer states, lazily created kernels/caches
    gc.collect()
    before = memory.baseline_bytes()
    _, peak, method = memory.measure_peak(step)
    out = dict(peak_bytes=peak, before_bytes=before, method=method, step_s=round((time.time() - t0) / 2, 2),
               amp=str(amp))
    del model, opt, sched, module, step, params
    gc.collect()
    return out


def measure(cfg: dict, timeout: int = 900) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {cfg} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def predict(cfg: dict) -> int:
    from finlora_utils import memory, train   # train: the kit's CPU attention switch

    return memory.plan(cfg["model"], bits=cfg["bits"], rank=cfg["rank"], seq_len=cfg["seq_len"],
                       batch=cfg["batch"], grad_checkpointing=cfg["grad_checkpointing"],
                       label_only_logits=cfg["label_only_logits"], label_tokens=LABEL_TOKENS, device="cpu",
                       math_attention=cfg["seq_len"] <= train.SHORT_ATTENTION,
                       runtime_bytes=0).total_bytes   # step 2 of a warmed-up process: the runtime is resident


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--train-one", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="tiny model only (controlled grid and smoke study runs)")
    ap.add_argument("--study-steps", type=int, default=25,
                    help="optimizer steps per study-run training (cpu preset 03: 100; 04 runs take at most 12)")
    ap.add_argument("--no-study", action="store_true", help="only the controlled grid")
    ap.add_argument("--out", default=str(ROOT / "reports" / "results" / "planner_accuracy.json"))
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(json.loads(a.one))))
        return 0
    if a.train_one:
        print(json.dumps(train_one(*a.train_one)))
        return 0
    from finlora_utils.results import git_commit

    commit = git_commit()   # the code the bench starts with (edits while it runs must not relabel it)
    from finlora_utils import memory
    from finlora_utils.results import atomic_write_text, write_bench

    rows = []
    hdr = f"{'model':<18}{'bits':>5}{'rank':>5}{'seq':>6}{'bs':>4}{'ckpt':>6}{'lbl':>5}{'pred MiB':>10}{'meas MiB':>10}{'err %':>8}{'static':>8}"
    print(hdr)
    for cfg in grid(a.quick):
        m = measure(cfg)
        pred = predict(cfg)
        err = 100.0 * (pred - m["measured_bytes"]) / m["measured_bytes"]
        row = dict(cfg, predicted_bytes=pred, **m, error_pct=round(err, 2))
        rows.append(row)
        print(f"{cfg['model'][:17]:<18}{cfg['bits']:>5}{cfg['rank']:>5}{cfg['seq_len']:>6}{cfg['batch']:>4}"
              f"{'on' if cfg['grad_checkpointing'] else 'off':>6}{'y' if cfg['label_only_logits'] else 'n':>5}"
              f"{pred / 2**20:>10.1f}{m['measured_bytes'] / 2**20:>10.1f}{err:>+8.1f}{m['static_bytes'] / 2**20:>8.1f}", flush=True)
    study_rows = []
    if not a.no_study:
        import tempfile

        print(f"\nthe study's own runs (FPB, batch 4; peak training memory, most loaded rank; "
              f"{a.study_steps} steps, 04 at most 12):")
        print(f"{'model':<18}{'nb':>3}{'prec':>6}{'rank':>5}{'mode':>9}{'seq':>5}{'pred MiB':>10}{'meas MiB':>10}"
              f"{'err %':>8}  per rank MiB")
        with tempfile.TemporaryDirectory(prefix="finlora-planner-study-") as tmp:
            for run in study_grid(a.quick, a.study_steps):
                m = measure_study(run, Path(tmp))
                err = 100.0 * (m["predicted_bytes"] - m["measured_bytes"]) / m["measured_bytes"]
                study_rows.append(dict(run, **m, error_pct=round(err, 2)))
                mode = run["parallel"] if run["nproc"] == 1 else f"{run['parallel'][:4]}{run['nproc']}"
                print(f"{run['model'][:17]:<18}{run['notebook']:>3}{run['precision']:>6}{run['rank']:>5}{mode:>9}"
                      f"{m['seq_len']:>5}{m['predicted_bytes'] / 2**20:>10.1f}{m['measured_bytes'] / 2**20:>10.1f}"
                      f"{err:>+8.1f}  {', '.join(f'{b / 2**20:.0f}' for b in m['rank_bytes'])}", flush=True)
    worst = max(abs(r["error_pct"]) for r in rows + study_rows)
    write_bench(a.out, "planner_accuracy",
                {"grid": grid(a.quick), "label_tokens": LABEL_TOKENS,
                 "study": study_grid(a.quick, a.study_steps) if not a.no_study else []},
                dict(rows=rows, study_rows=study_rows, max_abs_error_pct=worst, method=rows[0]["method"],
                     note="grid: measured = VmHWM during the 2nd training step minus RSS before loading; study: "
                          "train_info.peak_mem_bytes (memory.PEAK_DEFINITION) vs train_info.memory_plan"),
                commit=commit)
    print("\nFinLoRA's reported GPU memory (Llama-3.1-8B, NER) vs the planner:")
    for sc in memory.PAPER_SCENARIOS:
        for r in memory.paper_comparison(sc):
            print(f"  {sc:<16} {r['bits']:>2}-bit batch {r['batch']}  paper {r['paper_gb']:6.2f}  "
                  f"planner {r['predicted']:6.2f}  ({r['error_pct']:+.0f}%)")
    import csv, io  # noqa: E401 - the CSV twin for spreadsheets and the notebook
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(Path(a.out).with_suffix(".csv"), buf.getvalue())
    print(f"planner max abs error: {worst:.1f}%")
    return 0


if __name__ == "__main__":
    from finlora_utils.errors import cli_entry   # a user's mistake: one error line, exit 2

    sys.exit(cli_entry(main)())
