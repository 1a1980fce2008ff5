"""Step time, throughput and per-rank memory of single-process, DDP x N and pipeline x N QLoRA training.

    python bench/parallel_scaling.py                                  # embedded SmolLM2, nf4, 2 ranks
    python bench/parallel_scaling.py --model tiny-random-llama --steps 6
    python bench/parallel_scaling.py --model random:smollm2-1.7b --modes none,pipeline --steps 2 --batch-size 4

Each mode runs through parallel.launch (torchrun). Every process gets the same share of the cores
(cores / N threads), so `speedup` = tokens/s of the mode / tokens/s of the single process measures the
parallelism itself, and efficiency = speedup / N (1.00 = perfect scaling; DDP pays an all-reduce per
step, the pipeline a bubble per batch plus point-to-point sends). A last row runs the single process on
all the cores: what a user of this machine would otherwise do. On a shared or small CPU that row can be
slower than the 1-share row (OpenMP threads spin when the cores are busy elsewhere); on an idle machine it
is the honest yardstick, and against it two CPU ranks may well be below 1x. Numbers come from the results
JSON: tokens/s is train.py's own (non-padding tokens / training-loop wall time), step time is wall / steps, both
over the steps after the first where a run has more than one (a fresh process's first step also faults in its
memory and builds its kernels; train_info.first_step has its seconds), the whole run's efficiency beside them.
With --repeats N every mode runs N times, interleaved, and the fastest run of each counts. The pipeline's
micro-batch count is the kit's choice unless --micro-batches names one (finlora_utils.microbatch: the one a
run with micro_batches=0 takes); its predicted efficiency is printed first and beside the measured one.

Memory: each rank's peak is its resident-set high-water mark over the training loop (VmHWM, reset when the
loop starts, so it holds the loaded weights and the training's own peak, not loading transients). A pipeline
rank loads only its stage, so `pipeline xN per-rank peak / single peak` falls with N until the process
baseline (python, torch and the libraries, measured in a bare process and shown) and the activations
dominate. Beside it the memory planner's prediction per stage; the planner leaves the baseline out, so it is
compared with the peak above the baseline. `--model random:<shipped config>` (e.g. random:smollm2-1.7b)
trains a random-weights model of that shape, written once to the cache: for memory only, where the weights
dominate. The last line is `ddp efficiency: X.XX (steps 2-N; whole run Y.YY)` when DDP ran, else the memory
ratio. The figures, every row and how they were made (config, commit, machine, data and base-model provenance)
go to a results file (reports/bench/parallel_scaling.json; --json PATH), named on the line before the summary
lines.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finlora_utils import parallel  # noqa: E402
from finlora_utils.config import ConfigError, LoraSettings, TrainConfig  # noqa: E402
from finlora_utils.flops import pipeline_bubble  # noqa: E402


def run(mode: str, args, out: Path, threads: int, label: str) -> dict:
    cfg = config_for(mode, args, out, label)
    res = parallel.launch(cfg, timeout_s=args.timeout, results_dir=out / "results", force=True,
                          log=(print if args.verbose else None), threads_per_rank=threads)
    ti = res["train_info"]
    ranks = ti["parallel"]["ranks"]
    return dict(mode=label, steps=ti["steps"], step_s=ti["wall_s"] / ti["steps"], tokens_per_s=ti["tokens_per_s"],
                **steady(ti), peaks=[loop_peak(r) for r in ranks],
                final_loss=ti["loss_curve"][-1][1],
                n=1 if mode == "none" else args.nproc, kind=mode, config=cfg,
                shared_prefix=(ti.get("memory_plan") or {}).get("shared_prefix", 0) if ti.get("share_prefix") else 0)


def steady(ti: dict) -> dict:
    """Step time and tokens/s over the steps after the first (None for a one-step run): a fresh process's first
    step also faults in its memory and builds its kernels, which a real run of hundreds of steps pays once."""
    first = ti.get("first_step")
    if ti["steps"] < 2 or not first:
        return dict(steady_step_s=None, steady_tokens_per_s=None)
    wall = ti["wall_s"] - first["wall_s"]
    return dict(steady_step_s=wall / (ti["steps"] - 1),
                steady_tokens_per_s=(ti["nonpad_tokens"] - first["nonpad_tokens"]) / wall)


def speed(row: dict, whole: bool = False) -> float:
    """tokens/s of a row: after its first step where the run had more than one, else (or whole=True) the run's."""
    return row["tokens_per_s"] if whole or row["steady_tokens_per_s"] is None else row["steady_tokens_per_s"]


def fastest(runs: list[dict]) -> dict:
    """The repeat of one mode that counts: the fastest (a shared machine's slow repeats are other load), with
    every repeat's speed and peaks kept beside it."""
    best = max(runs, key=speed)
    return dict(best, repeats=[dict(steady_tokens_per_s=r["steady_tokens_per_s"], tokens_per_s=r["tokens_per_s"],
                                    peaks=r["peaks"]) for r in runs])


def loop_peak(rank: dict) -> int:
    """A rank's resident-set high-water mark over the training loop: the loaded process (its weights count)
    plus the training phase. Not the whole-process peak: on CPU that also counts, while a checkpoint loads,
    the page-cache pages of the mmap'ed safetensors (3.3 GiB of RssFile at SmolLM2-1.7B's nf4 load, measured),
    which the kernel drops under memory pressure, so it varies with the machine's load, not with the run."""
    if rank.get("baseline_mem_bytes") is None:   # a result written before the baseline was recorded
        return rank.get("process_peak_mem_bytes") or rank["peak_mem_bytes"]
    return rank["baseline_mem_bytes"] + rank["peak_mem_bytes"]


def config_for(mode: str, args, out: Path, label: str) -> TrainConfig:
    return TrainConfig(model=args.model_path, tasks=(args.task,), precision=args.precision,
                       lora=LoraSettings(rank=args.rank, alpha=16.0, dropout=0.05),
                       batch_size=args.batch_size, max_steps=args.steps, max_seq_len=args.max_seq_len,
                       max_train_samples=args.batch_size * args.steps, seed=0, parallel=mode,
                       nproc=1 if mode == "none" else args.nproc, micro_batches=args.micro_batches,
                       schedule=args.schedule, output_dir=str(out / "runs"), variant_tag="bench-" + re.sub(r"[^A-Za-z0-9_.+-]+", "-", label),
                       log_every=max(1, args.steps // 2), cpu_memory=args.cpu_memory,
                       pipeline_split=args.pipeline_split, share_prefix=args.share_prefix)


def planned_peaks(cfg: TrainConfig, gpus: int, seq_len: int, shared_prefix: int = 0) -> list[int]:
    """The planner's bytes per rank (above the process baseline) for this run's shape on CPU; `shared_prefix`:
    the prompt tokens a packed micro-batch holds once (train_info.memory_plan)."""
    from finlora_utils import memory
    from finlora_utils.config import PRECISION

    batch = cfg.batch_size if cfg.parallel != "ddp" else -(-cfg.batch_size // gpus)
    prec = PRECISION[cfg.precision]
    p = memory.plan(model=cfg.model, bits=prec.planner_bits, rank=cfg.lora.rank,
                    targets=cfg.lora.targets, seq_len=seq_len, batch=batch, gpus=gpus,
                    parallel=cfg.parallel if gpus > 1 else "none", micro_batches=min(cfg.micro_batches, batch),
                    schedule=cfg.schedule, device="cpu", label_only_logits=cfg.label_only_logits,
                    balance=cfg.pipeline_split if cfg.parallel == "pipeline" else "memory",
                    shared_prefix=min(shared_prefix, seq_len - 1), **prec.planner_kwargs)
    return [d["total_bytes"] for d in p.per_device]


def process_baseline() -> int:
    """VmHWM of a bare rank-like process: python, torch, transformers, peft, bitsandbytes, the kit imported."""
    code = ("import torch, torch.distributed, transformers, peft, bitsandbytes, datasets\n"
            "import finlora_utils.pipeline, finlora_utils.train\n"
            "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    return int(out.stdout.strip().splitlines()[-1]) * 1024


def schedule_bound(stages: int, micro_batches: int, schedule: str, measured: float) -> str:
    """The bubble the schedule itself predicts, so the measured pipeline efficiency has a ceiling beside it."""
    bubble = pipeline_bubble(stages, micro_batches)
    return (f"{schedule} bubble the schedule predicts: (p-1)/(m+p-1) = ({stages}-1)/({micro_batches}+{stages}-1) = "
            f"{bubble:.2f}, so pipeline efficiency at most {1 - bubble:.2f} (measured {measured:.2f}; the rest is "
            f"point-to-point sends, unequal stages and per-micro-batch overhead)")


def whole_text(after: str, whole: float) -> str:
    """What an efficiency line counts, with the whole run's figure beside it when it counted fewer steps."""
    return f" ({after})" if after.startswith("whole") else f" ({after}; whole run {whole:.2f})"


def write_results(args, rows: list[dict], baseline: int, figures: dict, cores: int, commit: str | None) -> dict:
    """The figures with how they were made (config, seed 0, commit, machine, data and base-model provenance)."""
    from finlora_utils import data, models, results
    from finlora_utils.data.hashes import file_hashes

    base = models.base_provenance(args.model)
    config = {k: v for k, v in vars(args).items() if k not in ("json", "model_path", "verbose")}
    stored = [dict({k: v for k, v in r.items() if k != "config"},
                   planned_peaks=planned_peaks(r["config"], r["n"], args.max_seq_len, r["shared_prefix"]))
              for r in rows]
    return results.write_bench(args.json, "parallel_scaling", config, dict(
        rows=stored, process_baseline_bytes=baseline, cores=cores, load_average=os.getloadavg()[0],
        figures=figures), seed=0, data_source=data.data_source(args.task), base_model=base,
        data_files=file_hashes([args.task], "train"), portable=True, commit=commit)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--task", default="fpb")
    ap.add_argument("--precision", default="nf4")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8, help="global batch (per step, all ranks together)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--micro-batches", type=int, default=0,
                    help="pipeline micro-batches per batch; 0 (default): the kit chooses (finlora_utils.microbatch)")
    ap.add_argument("--schedule", default="1f1b", choices=("gpipe", "1f1b"))
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of every mode, interleaved; the fastest of each after its first step counts, "
                         "with that run's whole-run figure and peaks")
    ap.add_argument("--verbose", action="store_true", help="stream the ranks' output")
    ap.add_argument("--modes", default="none,ddp,pipeline", help="which of none, ddp, pipeline to run")
    ap.add_argument("--pipeline-split", default="memory", choices=("memory", "even"),
                    help="layers per stage: balanced by the planner's memory, or the same number per stage")
    ap.add_argument("--share-prefix", action="store_true",
                    help="every mode runs each micro-batch's (a pipeline chunk's) shared prompt prefix once: off by "
                         "default, so every mode computes the same padded batches")
    ap.add_argument("--cpu-memory", default="exact", choices=("exact", "fast"),
                    help="the ranks' heap (TrainConfig.cpu_memory): exact peaks, or full speed with the heap kept")
    ap.add_argument("--json", default=None, help="results file: figures, config, commit, machine "
                                                 "(default: reports/bench/parallel_scaling.json)")
    args = ap.parse_args(argv)
    from finlora_utils.results import git_commit

    commit = git_commit()   # the code the bench starts with (edits while it runs must not relabel it)
    if args.json is None:
        from finlora_utils.paths import reports_dir

        args.json = str(reports_dir() / "bench" / "parallel_scaling.json")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "none" not in modes or not set(modes) <= {"none", "ddp", "pipeline"}:
        ap.error(f"--modes={args.modes!r}: expected none plus any of ddp, pipeline")
    for name in ("nproc", "batch_size", "steps", "micro_batches", "rank", "repeats"):
        low = {"nproc": 2, "micro_batches": 0}.get(name, 1)   # nproc: ranks beside the single process
        if getattr(args, name) < low:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)}: expected an integer >= {low}")
    if args.timeout <= 0:
        ap.error(f"--timeout={args.timeout}: expected seconds > 0")
    from finlora_utils.models import bench_model_path

    args.model_path = bench_model_path(args.model)
    args.micro_batch_choice = None
    if "pipeline" in modes and args.micro_batches == 0:   # what a pipeline run with micro_batches=0 trains with
        from finlora_utils import pipeline

        try:
            cfg, args.micro_batch_choice = pipeline.sized(config_for("pipeline", args, Path("."), "size"), args.nproc,
                                                          parallel.rank_device(args.nproc))   # where launch runs
        except ConfigError as e:
            ap.error(str(e))
        args.micro_batches = cfg.micro_batches
        c = args.micro_batch_choice
        print(f"micro-batches: {c['micro_batches']}, chosen by the kit: predicted pipeline efficiency "
              f"{c['predicted_efficiency']:.2f} (" + ", ".join(f"{x['micro_batches']}: {x['predicted_efficiency']:.2f}"
                                                            for x in c["candidates"]) + ")")
    elif args.micro_batches == 0:
        args.micro_batches = 1   # no pipeline runs: the count is never used
    cores = os.cpu_count() or 1
    share = max(1, cores // args.nproc)
    runs = [("none", share, f"single/{share}t")] + [(m, share, f"{m[:4]} x{args.nproc}") for m in modes if m != "none"]
    if "ddp" in modes:
        runs.append(("none", cores, f"single/{cores}t"))
    with tempfile.TemporaryDirectory(prefix="finlora-bench-") as tmp:
        done = [[run(mode, args, Path(tmp), threads, label) for mode, threads, label in runs]
                for _ in range(args.repeats)]   # interleaved: load that comes and goes hits every mode alike
    rows = [fastest([rep[i] for rep in done]) for i in range(len(runs))]
    baseline = process_baseline()
    base, base_whole = speed(rows[0]), speed(rows[0], whole=True)
    after = f"steps 2-{args.steps}" if rows[0]["steady_tokens_per_s"] is not None else f"whole run of {args.steps} step"
    print(f"{args.model} {args.precision} r{args.rank}, global batch {args.batch_size}, max_seq_len "
          f"{args.max_seq_len}, {args.steps} steps, pipeline {args.schedule} x{args.micro_batches} micro-batches, "
          f"{cores} cores, {share} thread(s) per process unless noted, load average {os.getloadavg()[0]:.1f}, "
          f"process baseline {baseline / 2**30:.2f} GiB, pipeline split {args.pipeline_split}, "
          f"cpu_memory {args.cpu_memory}, "
          f"shared prefix once {'on' if args.share_prefix else 'off'}"
          + (" (peaks include what the heap keeps)" if args.cpu_memory == "fast" else "")
          + f"; step s and tokens/s: {after}" + (f", fastest of {args.repeats} repeats" if args.repeats > 1 else ""))
    print(f"{'mode':<14}{'step s':>9}{'tokens/s':>11}{'speedup':>9}{'efficiency':>12}{'loss':>9}   "
          "peak GiB per rank (above baseline | planner)")
    for r in rows:
        ratio = speed(r) / base
        plan = planned_peaks(r["config"], r["n"], args.max_seq_len, r["shared_prefix"])
        per = ", ".join(f"{p / 2**30:.2f} ({(p - baseline) / 2**30:.2f} | {q / 2**30:.2f})"
                        for p, q in zip(r["peaks"], plan))
        step_s = r["step_s"] if r["steady_step_s"] is None else r["steady_step_s"]
        print(f"{r['mode']:<14}{step_s:>9.3f}{speed(r):>11.1f}{ratio:>8.2f}x{ratio / r['n']:>12.2f}"
              f"{r['final_loss']:>9.4f}   {per}")
    single = rows[0]
    lines, figures = [], {}   # the summary lines, printed after the results file is named
    if "pipeline" in modes:
        pipe = next(r for r in rows if r["kind"] == "pipeline")
        measured = max(pipe["peaks"]) / max(single["peaks"])
        above = (max(pipe["peaks"]) - baseline) / (max(single["peaks"]) - baseline)
        plan_pipe, plan_single = planned_peaks(pipe["config"], args.nproc, args.max_seq_len), \
            planned_peaks(single["config"], 1, args.max_seq_len, single["shared_prefix"])
        err = max(abs(q - (p - baseline)) / (p - baseline) for p, q in zip(pipe["peaks"], plan_pipe))
        lines.append(f"pipeline x{args.nproc} per-rank peak above baseline / single: {above:.2f} (planner "
                     f"{max(plan_pipe) / max(plan_single):.2f}; planner per stage within {err:.0%} of the measured)")
        efficiency = speed(pipe) / base / args.nproc
        whole = speed(pipe, whole=True) / base_whole / args.nproc
        figures.update(pipeline_efficiency=efficiency, pipeline_efficiency_whole_run=whole,
                       pipeline_bubble=pipeline_bubble(args.nproc, args.micro_batches), pipeline_peak_ratio=measured,
                       pipeline_peak_ratio_above_baseline=above, planner_stage_error=err)
    if "ddp" in modes:
        ddp_row = next(r for r in rows if r["kind"] == "ddp")
        ddp, full = speed(ddp_row), speed(rows[-1])
        lines.append(f"ddp x{args.nproc} vs single on all {cores} cores: {ddp / full:.2f}x")
        figures.update(ddp_efficiency=ddp / base / args.nproc, ddp_vs_single_all_cores=ddp / full,
                       ddp_efficiency_whole_run=speed(ddp_row, whole=True) / base_whole / args.nproc)
    if "pipeline" in modes:
        lines.append(schedule_bound(args.nproc, args.micro_batches, args.schedule, efficiency))
        if args.micro_batch_choice:
            lines.append(f"micro-batches chosen by the kit: {args.micro_batches} (predicted pipeline efficiency "
                         f"{args.micro_batch_choice['predicted_efficiency']:.2f}, measured {efficiency:.2f})")
        lines.append(f"pipeline efficiency: {efficiency:.2f}" + whole_text(after, whole))
        lines.append(f"pipeline x{args.nproc} per-rank peak / single peak: {measured:.2f}")
    if "ddp" in modes:
        lines.append(f"ddp efficiency: {figures['ddp_efficiency']:.2f}"
                     + whole_text(after, figures["ddp_efficiency_whole_run"]))
    doc = write_results(args, rows, baseline, figures, cores, commit)
    print(f"results: {args.json} (commit {doc['run_info']['git_commit']})")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    from finlora_utils.errors import cli_entry   # a user's mistake: one error line, exit 2

    sys.exit(cli_entry(main)())
