"""Step time and throughput of single-process, DDP x N and pipeline x N QLoRA training, same global batch.

    python bench/parallel_scaling.py                                  # embedded SmolLM2, nf4, 2 ranks
    python bench/parallel_scaling.py --model tiny-random-llama --steps 6

Each mode runs through parallel.launch (torchrun). Every process gets the same share of the cores
(cores / N threads), so `speedup` = tokens/s of the mode / tokens/s of the single process measures the
parallelism itself, and efficiency = speedup / N (1.00 = perfect scaling; DDP pays an all-reduce per
step, the pipeline a bubble per batch plus point-to-point sends). A last row runs the single process on
all the cores: what a user of this machine would otherwise do. On a shared or small CPU that row can be
slower than the 1-share row (OpenMP threads spin when the cores are busy elsewhere); on an idle machine it
is the honest yardstick, and against it two CPU ranks may well be below 1x. Numbers come from the results
JSON: tokens/s is train.py's own (non-padding tokens / training-loop wall time), step time is wall / steps.
The last line is `ddp efficiency: X.XX`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finlora_utils import parallel  # noqa: E402
from finlora_utils.config import LoraSettings, TrainConfig  # noqa: E402


def run(mode: str, args, out: Path, threads: int, label: str) -> dict:
    cfg = TrainConfig(model=args.model, tasks=(args.task,), precision=args.precision,
                      lora=LoraSettings(rank=args.rank, alpha=16.0, dropout=0.05),
                      batch_size=args.batch_size, max_steps=args.steps, max_seq_len=args.max_seq_len,
                      max_train_samples=args.batch_size * args.steps, seed=0, parallel=mode,
                      nproc=1 if mode == "none" else args.nproc, micro_batches=args.micro_batches,
                      schedule=args.schedule, output_dir=str(out / "runs"), variant_tag=f"bench-{label}",
                      log_every=max(1, args.steps // 2))
    res = parallel.launch(cfg, timeout_s=args.timeout, results_dir=out / "results", force=True,
                          log=(print if args.verbose else None), threads_per_rank=threads)
    ti = res["train_info"]
    ranks = ti["parallel"]["ranks"]
    return dict(mode=label, steps=ti["steps"], step_s=ti["wall_s"] / ti["steps"], tokens_per_s=ti["tokens_per_s"],
                peak_gib=max(r["peak_mem_bytes"] for r in ranks) / 2**30, final_loss=ti["loss_curve"][-1][1],
                n=1 if mode == "none" else args.nproc)


def print_schedule_bound(stages: int, micro_batches: int, schedule: str, measured: float) -> None:
    """The bubble the schedule itself predicts, so the measured pipeline efficiency has a ceiling beside it."""
    from finlora_utils.flops import pipeline_bubble

    bubble = pipeline_bubble(stages, micro_batches)
    print(f"{schedule} bubble the schedule predicts: (p-1)/(m+p-1) = ({stages}-1)/({micro_batches}+{stages}-1) = "
          f"{bubble:.2f}, so pipeline efficiency at most {1 - bubble:.2f} (measured {measured:.2f}; the rest is "
          f"point-to-point sends, unequal stages and per-micro-batch overhead)")


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
    ap.add_argument("--micro-batches", type=int, default=4, help="pipeline micro-batches per batch")
    ap.add_argument("--schedule", default="1f1b", choices=("gpipe", "1f1b"))
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument("--verbose", action="store_true", help="stream the ranks' output")
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    share = max(1, cores // args.nproc)
    runs = [("none", share, f"single/{share}t"), ("ddp", share, f"ddp x{args.nproc}"),
            ("pipeline", share, f"pipe x{args.nproc}"), ("none", cores, f"single/{cores}t")]
    with tempfile.TemporaryDirectory(prefix="finlora-bench-") as tmp:
        rows = [run(mode, args, Path(tmp), threads, label) for mode, threads, label in runs]
    base = rows[0]["tokens_per_s"]
    print(f"{args.model} {args.precision} r{args.rank}, global batch {args.batch_size}, max_seq_len "
          f"{args.max_seq_len}, {args.steps} steps, pipeline {args.schedule} x{args.micro_batches} micro-batches, "
          f"{cores} cores, {share} thread(s) per process unless noted, load average {os.getloadavg()[0]:.1f}")
    print(f"{'mode':<14}{'step s':>9}{'tokens/s':>11}{'speedup':>9}{'efficiency':>12}{'peak GiB/rank':>15}{'loss':>9}")
    for r in rows:
        speed = r["tokens_per_s"] / base
        print(f"{r['mode']:<14}{r['step_s']:>9.3f}{r['tokens_per_s']:>11.1f}{speed:>8.2f}x{speed / r['n']:>12.2f}"
              f"{r['peak_gib']:>15.2f}{r['final_loss']:>9.4f}")
    ddp, pipe, full = rows[1]["tokens_per_s"], rows[2]["tokens_per_s"], rows[3]["tokens_per_s"]
    print(f"ddp x{args.nproc} vs single on all {cores} cores: {ddp / full:.2f}x")
    print(f"pipeline efficiency: {pipe / base / args.nproc:.2f}")
    print(f"ddp efficiency: {ddp / base / args.nproc:.2f}")
    print_schedule_bound(args.nproc, args.micro_batches, args.schedule, pipe / base / args.nproc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
