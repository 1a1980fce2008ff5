"""Which kernel runs this machine's linear layers fastest: torch's own matmul, oneDNN with the weight as it is,
or oneDNN with the weight laid out once (finlora_utils.prepack), at the model's projection shapes.

    .venv/bin/python bench/linear_kernels.py     # embedded model, 288 rows, fp32 and (where native) bf16
    .venv/bin/python bench/linear_kernels.py --dtypes fp32 --rows 512

Why: inference in the kit uses the prepacked kernel (finlora_utils.prepack); training calls torch's F.linear
and, for a frozen weight's input gradient, grad @ W. In fp32 torch's CPU matmul is MKL, in bf16 oneDNN, so on
a CPU where oneDNN's fp32 kernels beat MKL's, a training step could route its fp32 matmuls through oneDNN.
This bench answers whether that would pay here, per shape: forward (x @ W.T, each kernel) and input gradient
(g @ W: torch vs oneDNN on W.T as it is). Each timing cycles through --weights different weights, as a forward
does, so no weight stays in cache; the best of --repeats blocks counts (a shared machine's slow blocks are
someone else's load). Last lines, one per dtype:
`onednn vs torch, <dtype>: forward X.XXx (prepacked Y.YYx), input gradient Z.ZZx` (geometric means over shapes),
after the results file (every rate with the config, commit and machine: reports/bench/linear_kernels.json; --json).
Weights and inputs are seeded random tensors in the model's shapes: the figures are the kernels', not the model's.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from finlora_utils import flops, hardware, prepack, results  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def rate(calls, flop_per_call: float, min_time_s: float, repeats: int) -> float:
    """Best FLOP/s of one pass through `calls` (each a different weight), timed by flops.best_rate."""
    return flops.best_rate(lambda: [c() for c in calls], flop_per_call * len(calls), min_time_s, repeats)


def measure(shape: tuple[int, int, int], dtype, weights: int, min_time_s: float, repeats: int) -> dict:
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(m, k, generator=g).to(dtype) for _ in range(weights)]
    gs = [torch.randn(m, n, generator=g).to(dtype) for _ in range(weights)]
    ws = [torch.randn(n, k, generator=g).to(dtype) for _ in range(weights)]
    fl = 2.0 * m * k * n
    out = {}
    with torch.no_grad():
        out["torch"] = rate([lambda x=x, w=w: torch.nn.functional.linear(x, w) for x, w in zip(xs, ws)], fl,
                            min_time_s, repeats)
        dense = [prepack.dense_linear(w) for w in ws]
        out["onednn"] = rate([lambda x=x, f=f: f(x) for x, f in zip(xs, dense)], fl, min_time_s, repeats)
        packed = [prepack.packed_linear(w, rows_hint=m) for w in ws]
        out["prepacked"] = rate([lambda x=x, f=f: f(x) for x, f in zip(xs, packed)], fl, min_time_s, repeats)
        out["grad torch"] = rate([lambda g=g_, w=w: g @ w for g_, w in zip(gs, ws)], fl, min_time_s, repeats)
        transposed = [prepack.dense_linear(w.t()) for w in ws]
        out["grad onednn"] = rate([lambda g=g_, f=f: f(g) for g_, f in zip(gs, transposed)], fl, min_time_s,
                                  repeats)
    return out


def geomean(xs) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded", help="whose projection shapes (a name models.load_model knows)")
    p.add_argument("--rows", type=int, default=288, help="rows per matmul (tokens of a batch; 288 = FPB batch 8)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated of fp32,bf16; bf16 only where native")
    p.add_argument("--weights", type=int, default=30, help="different weights cycled per timing (as in a forward)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per timed block")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None, help="results file: figures, config, commit, machine "
                                                "(default: reports/bench/linear_kernels.json)")
    a = p.parse_args(argv)
    commit = results.git_commit()   # the code the bench starts with (edits while it runs must not relabel it)
    names = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    bad = [d for d in names if d not in DTYPES]
    if bad or not names:
        p.error(f"--dtypes={a.dtypes!r}: expected a comma-separated list of {', '.join(DTYPES)}")
    for flag in ("rows", "weights", "repeats"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag}={getattr(a, flag)}: expected an integer >= 1")
    if a.min_time <= 0:
        p.error(f"--min-time={a.min_time}: expected seconds > 0")
    if a.threads:
        torch.set_num_threads(a.threads)
    ok, why = prepack.supported(torch.float32)
    if not ok:
        p.error(f"oneDNN kernels unavailable: {why}")
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if hardware.cpu_flag(f)]
    print(f"machine: {results.environment()['hardware']['cpu']} ({', '.join(isa) or 'no AVX2'}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
          + hardware.caps_text())   # a capped run is not the CPU's own figure
    shapes = flops.projection_shapes(a.model, a.rows)
    summary, measured = [], {}
    for name in names:
        dtype = DTYPES[name]
        ok, why = prepack.supported(dtype)
        if not ok:
            print(f"{name}: skipped ({why})")
            continue
        print(f"\n{name}, GFLOP/s    {'torch':>8s} {'onednn':>8s} {'prepacked':>9s} | "
              f"{'grad torch':>10s} {'grad onednn':>11s}")
        ratios = {"forward": [], "prepacked": [], "grad": []}
        measured[name] = {"shapes": {}}
        for label, shape in shapes.items():
            r = measure(shape, dtype, a.weights, a.min_time, a.repeats)
            measured[name]["shapes"][label] = dict(shape=list(shape), flop_per_s=r)
            print(f"{label:10s} {'x'.join(map(str, shape)):>12s} {r['torch'] / 1e9:8.1f} {r['onednn'] / 1e9:8.1f} "
                  f"{r['prepacked'] / 1e9:9.1f} | {r['grad torch'] / 1e9:10.1f} {r['grad onednn'] / 1e9:11.1f}")
            ratios["forward"].append(r["onednn"] / r["torch"])
            ratios["prepacked"].append(r["prepacked"] / r["torch"])
            ratios["grad"].append(r["grad onednn"] / r["grad torch"])
        g = {k: geomean(v) for k, v in ratios.items()}
        measured[name]["onednn_vs_torch"] = {"forward": g["forward"], "forward_prepacked": g["prepacked"],
                                             "input_gradient": g["grad"]}
        summary.append(f"onednn vs torch, {name}: forward {g['forward']:.2f}x (prepacked {g['prepacked']:.2f}x), "
                       f"input gradient {g['grad']:.2f}x")
    if not summary:
        print("no dtype could be measured on this machine", file=sys.stderr)
        return 1
    from finlora_utils.paths import reports_dir

    out = Path(a.json) if a.json else reports_dir() / "bench" / "linear_kernels.json"
    config = dict(vars(a), json=None, threads=torch.get_num_threads(), shapes_of=a.model,
                  cpu_capability=torch.backends.cpu.get_cpu_capability(), isa=isa)
    doc = results.write_bench(out, "linear_kernels", config, {"dtypes": measured}, seed=0, portable=True,
                               commit=commit)
    print(f"\nresults: {out} (commit {doc['run_info']['git_commit']})")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    from finlora_utils.errors import cli_entry   # a user's mistake: one error line, exit 2

    sys.exit(cli_entry(main)())
