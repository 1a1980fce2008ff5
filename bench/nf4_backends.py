"""4-bit base layers on this machine: bitsandbytes (what the kit uses) vs torchao's NF4 tensor (torchtune's QLoRA)
vs optimum-quanto's qint4, against the unquantized layer, at the embedded model's projection shapes, in the dtype
the kit computes a 4-bit model in here (bf16 where the CPU has it natively, else fp32; `--dtype` to choose).

    .venv/bin/python bench/nf4_backends.py                 # 488 rows (a batch of 8 FPB prompts), 2 threads
    .venv/bin/python bench/nf4_backends.py --rows 128
    # the other backends are not in requirements.txt; to measure them (any folder, not the project's venv):
    .venv/bin/pip install --no-deps --target /tmp/nf4-backends torchao==0.18.0 optimum-quanto==0.2.7
    .venv/bin/python bench/nf4_backends.py --extra-path /tmp/nf4-backends

What a LoRA step asks of a frozen 4-bit layer: its forward and its input gradient (no weight gradient), so each
row times y = layer(x); y.backward(g) with x of `rows` x in_features, the best of 3 blocks of calls.
Each backend quantizes the same random weight (normal, std 0.02): bitsandbytes NF4 with blocks of 64 and double
quantization (the kit's QLoRA setting), torchao NF4 with blocks of 64 (scaler blocks of 64: 576 x 576 / 64 scalers
do not divide into torchao's default 256), quanto int4 with its default groups. The relative error of each
output against the unquantized layer's is printed beside the time, so a fast backend cannot hide a worse grid.
A backend that is not installed is listed as such, with the command above; never timed as zero.
Last line: `4-bit layer time / bf16: bitsandbytes X.XXx` (`/ fp32` where the kit computes in fp32; the others
measured after it), after the results file
(every time and error with the backends' versions, config, commit and machine: reports/bench/nf4_backends.json).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHAPES = {"q_proj": (576, 576), "k_proj": (576, 192), "gate_proj": (576, 1536), "down_proj": (1536, 576)}
INSTALL = ".venv/bin/pip install --no-deps --target DIR torchao==0.18.0 optimum-quanto==0.2.7; then --extra-path DIR"


def best_ms(fn, calls: int = 10, blocks: int = 3) -> float:
    fn()   # warm-up: kernel selection, first dequantization buffers
    best = float("inf")
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls * 1e3)
    return best


def backends(plain: str):
    """name -> build(weight) returning a callable x -> y, or a string saying why it is unavailable. plain: the
    unquantized layer's name, its dtype's ('bf16' or 'fp32')."""
    import torch

    out = {plain: lambda w: (lambda x: torch.nn.functional.linear(x, w))}
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bf

        def bnb_nf4(w):
            q, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
            return lambda x: bnb.matmul_4bit(x, q.t(), quant_state=state)
        out["bitsandbytes"] = bnb_nf4
    except ImportError as e:
        out["bitsandbytes"] = f"not installed ({e})"
    try:
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4, to_nf4

        out["torchao"] = lambda w: (lambda x, nf=to_nf4(w, 64, 64): linear_nf4(x, nf))
    except ImportError:
        out["torchao"] = f"not installed: {INSTALL}"
    try:
        from optimum.quanto import freeze, qint4, quantize

        def quanto(w):
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
            lin.weight.data.copy_(w)
            lin.weight.requires_grad_(False)
            m = torch.nn.Sequential(lin)
            quantize(m, weights=qint4)
            freeze(m)
            return m
        out["quanto"] = quanto
    except ImportError:
        out["quanto"] = f"not installed: {INSTALL}"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=488, help="rows of x: batch x padded length")
    ap.add_argument("--calls", type=int, default=10, help="calls per timed block (best of 3 blocks)")
    ap.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                    help="compute dtype: auto = the kit's for a 4-bit model here (bf16 only where native)")
    ap.add_argument("--extra-path", help="a folder holding torchao / optimum-quanto (pip install --target)")
    ap.add_argument("--json", default=None, help="results file: figures, config, commit, machine "
                                                 "(default: reports/bench/nf4_backends.json)")
    a = ap.parse_args(argv)
    from finlora_utils import results

    commit = results.git_commit()   # the code the bench starts with (edits while it runs must not relabel it)
    if a.rows < 1 or a.calls < 1:
        ap.error(f"--rows={a.rows}, --calls={a.calls}: expected integers >= 1")
    if a.extra_path:
        sys.path.append(a.extra_path)   # after the venv's own packages: it cannot shadow torch or the kit's pins
    import torch

    from finlora_utils.hardware import caps_text, cpu_bf16_native
    from finlora_utils.results import environment

    # the CPU's answer, not the GPU's: these layers run on the CPU whatever else the machine has
    plain = a.dtype if a.dtype != "auto" else "bf16" if cpu_bf16_native() else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[plain]
    torch.manual_seed(0)
    built = backends(plain)
    names = [n for n, b in built.items() if callable(b)]
    for n, b in built.items():
        if not callable(b):
            print(f"{n}: {b}")
    hw = environment()["hardware"]
    print(f"{hw['cpu']} ({hw['cpu_count']} CPUs{caps_text()}), {torch.get_num_threads()} threads; {a.rows} rows, "
          f"{plain}; forward + input gradient, ms per call (relative output error vs {plain})")
    total, per_shape = dict.fromkeys(names, 0.0), {}
    for shape, (i, o) in SHAPES.items():
        w = (torch.randn(o, i) * 0.02).to(dtype)
        x = torch.randn(a.rows, i, dtype=dtype, requires_grad=True)
        g = torch.randn(a.rows, o, dtype=dtype)
        with torch.no_grad():
            ref = torch.nn.functional.linear(x, w).float()
        cells = []
        for n in names:
            layer = built[n](w)
            with torch.no_grad():
                err = ((layer(x).float() - ref).norm() / ref.norm()).item()
            ms = best_ms(lambda: layer(x).backward(g), a.calls)
            total[n] += ms
            per_shape.setdefault(shape, {"in_out": [i, o]})[n] = {"ms_per_call": ms, "relative_error_vs_plain": err}
            cells.append(f"{n} {ms:.3f} ({err:.4f})")
        print(f"{shape:<10} {i}x{o}: " + ", ".join(cells))
    print("all four shapes: " + ", ".join(f"{n} {v:.2f} ms" for n, v in total.items()))
    ratios = ", ".join(f"{n} {total[n] / total[plain]:.2f}x" for n in names if n != plain)
    from finlora_utils.paths import reports_dir

    out = Path(a.json) if a.json else reports_dir() / "bench" / "nf4_backends.json"
    config = dict(vars(a), json=None, extra_path=bool(a.extra_path), threads=torch.get_num_threads(),
                  compute_dtype=plain)
    doc = results.write_bench(out, "nf4_backends", config, dict(
        backends={n: backend_version(n) if callable(b) else b for n, b in built.items()}, shapes=per_shape,
        total_ms=total, plain=plain, time_vs_plain={n: total[n] / total[plain] for n in names if n != plain}),
        seed=0, portable=True, commit=commit)
    print(f"results: {out} (commit {doc['run_info']['git_commit']})")
    print(f"4-bit layer time / {plain}: {ratios}")
    return 0


def backend_version(name: str) -> str:
    """The installed version of the package behind a measured backend (the extra ones are not in the pins)."""
    from importlib import metadata

    package = {"bf16": "torch", "fp32": "torch", "bitsandbytes": "bitsandbytes", "torchao": "torchao",
               "quanto": "optimum-quanto"}[name]
    try:
        return f"{package} {metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return f"{package} (version unknown)"


if __name__ == "__main__":
    from finlora_utils.errors import cli_entry   # a user's mistake: one error line, exit 2

    sys.exit(cli_entry(main)())
