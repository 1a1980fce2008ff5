"""What torch.compile would buy the kit here: LoRA training steps and label scoring, eager vs compiled.

    FINLORA_DATA_DIR=../shared/data .venv/bin/python bench/compile_gain.py     # embedded, FPB (~15 min, 2 cores)
    .venv/bin/python bench/compile_gain.py --model tiny-random-llama --steps 3 --n 8 --backend eager   # a minute

Training is compiled the way torchtune compiles a model: each decoder layer on its own
(`layer.compile(dynamic=True)`; the layers are alike, so dynamo traces one and the rest reuse its code), the rest
eager. It runs the kit's `train.train` on the same examples, seed and config, once eager and once with the layers
compiled (through its `wrap_model` hook), for each LoRA dropout in --dropouts (the kit draws its packed dropout
masks with `Tensor.random_`, which dynamo cannot trace: a graph break per adapted projection). Scoring compiles
the decoder's forward as one graph (`model.model.compile(dynamic=True)`): compiled per layer, every layer
recompiles, since the KV cache is indexed by the layer's number, which dynamo guards (60 compiles of the
embedded model's 30 layers measured, then slower than eager). It runs `score_labels` on --n test prompts, eager
as the kit scores (weights prepacked, finlora_utils.prepack) and compiled (plain weights: inductor lays out its
own), each called twice, the first call paying the compile. Every case runs in its own fresh process with its
own empty compiler cache, so a compile time is what a user's first run pays.

Per case: the first step (call) and the median of the steady ones; the ratio eager / compiled over the steady
ones; and after how many steps (prompts) the compile pays for itself at that ratio ("never" at 1x or below). The
compiled run's losses and predictions are compared with the eager run's.
Last lines: `compile vs eager, train dropout D: X.XXx per step, first step +S s, pays after N steps` (one per
dropout) and `compile vs eager, score: X.XXx per prompt, first call +S s, pays after N prompts`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BACKENDS = ("inductor", "eager")   # eager: dynamo traces, nothing is generated (the tests' fast path)
SCORE_BATCH = 8                    # evaluate's default batch


class StepClock:
    """on_step hook for train.train: seconds of each optimizer step, counted from the plan's start."""

    def __init__(self):
        self.times: list[float] = []
        self.mark = None

    def begin(self, total: int, start: int) -> None:
        self.mark = time.perf_counter()

    def __call__(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        self.times.append(now - self.mark)
        self.mark = now


def compile_layers(model, backend: str) -> int:
    """Compile each decoder layer of `model` (a CausalLM, peft model or TrainModule) in place; returns how many."""
    from finlora_utils.train import causal_lm

    layers = causal_lm(model).model.layers
    for layer in layers:
        layer.compile(dynamic=True, backend=backend)
    return len(layers)


def pays_after(first_extra: float, eager_each: float, compiled_each: float, first_units: int = 1) -> float | None:
    """Steps (or prompts) after which the compiled run has caught up with the eager one; None if never.
    first_extra: how much longer the compiled run's first step (call) took; it covered first_units of work."""
    saved = eager_each - compiled_each
    if saved <= 0:
        return None
    return first_units + max(first_extra, 0.0) / saved


def _pays_text(n: float | None, unit: str) -> str:
    return "never" if n is None else f"{n:,.0f} {unit}"


def train_run(a, dropout: float, compiled: bool, out: Path) -> dict:
    from finlora_utils import train
    from finlora_utils.config import LoraSettings, TrainConfig

    cfg = TrainConfig(model=a.model, tasks=(a.task,), precision=a.precision, double_quant=a.precision == "nf4",
                      lora=LoraSettings(rank=a.rank, alpha=32.0, dropout=dropout,
                                        targets=("q_proj", "k_proj", "v_proj")),
                      batch_size=a.batch, max_steps=a.steps, max_train_samples=a.steps * a.batch, seed=a.seed,
                      log_every=a.steps, output_dir=str(out / "runs"), cpu_memory="fast", lr=5e-4,
                      variant_tag=f"compile-{int(compiled)}")

    def wrap(module):
        if compiled:
            compile_layers(module, a.backend)
        return module

    clock = StepClock()
    r = train.train(cfg, wrap_model=wrap, results_dir=out / "results", on_step=clock, force=True,
                    log=lambda *x, **k: None)
    steady = clock.times[1:]
    return dict(first_step_s=clock.times[0], steady_median_s=statistics.median(steady), step_s=clock.times,
                losses=[loss for _, loss in r["train_info"]["loss_curve"]], amp_dtype=r["train_info"]["amp_dtype"],
                graphs=compiled_graphs())


def compiled_graphs() -> int:
    """Graphs dynamo compiled in this process (0: nothing was compiled, e.g. everything fell back to eager)."""
    import torch._dynamo.utils

    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def score_run(a, compiled: bool) -> dict:
    import numpy as np

    from finlora_utils import data, models, prepack, scoring

    model, tok = models.load_model(a.model, precision=a.score_precision)
    models.contiguous_head(model)
    rows = data.load_task(a.task, split="test", max_samples=a.n, seed=a.seed)
    prompts, labels = [r["context"] for r in rows], data.get_task(a.task).labels
    # the layout the eager call computes with (score_labels prepacks only where the call repays it)
    layout = prepack.decide(model, forwards=-(-len(prompts) // SCORE_BATCH)) if not compiled else {}
    if compiled:
        model.model.compile(dynamic=True, backend=a.backend)
    calls = []
    for _ in range(2):
        t0 = time.perf_counter()
        sc = scoring.score_labels(model, tok, prompts, labels, batch_size=SCORE_BATCH,
                                  prepack=False if compiled else None)
        calls.append(time.perf_counter() - t0)
    return dict(first_call_s=calls[0], second_call_s=calls[1], prompts=len(prompts),
                predictions=[labels[j] for j in np.argmax(sc, axis=1)], graphs=compiled_graphs(),
                prepacked_layers=layout.get("layers", 0), plain_layout_why=layout.get("why", "compiled"))


def _child(a) -> int:
    """One case in this fresh process: train:<dropout>:<0|1> or score:<0|1> (1 = compiled); writes its JSON."""
    kind, *rest = a.case.split(":")
    compiled = rest[-1] == "1"
    got = train_run(a, float(rest[0]), compiled, Path(a.out)) if kind == "train" else score_run(a, compiled)
    Path(a.out, "case.json").write_text(json.dumps(got))
    return 0


def _spawn(case: str, argv: list[str], timeout: float) -> dict:
    """Run one case in a fresh process with its own empty compiler cache (a cold compile, as a first run's)."""
    with tempfile.TemporaryDirectory(prefix="finlora-compile-") as tmp:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(Path(tmp, "inductor")),
                   TRITON_CACHE_DIR=str(Path(tmp, "triton")))   # a GPU's kernels: cold as well
        cmd = [sys.executable, __file__, *argv, "--case", case, "--out", tmp]
        try:
            subprocess.run(cmd, check=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchCaseError(f"case {case}: no result within --timeout={timeout:g} s") from None
        except subprocess.CalledProcessError as e:   # the case printed its own error
            raise BenchCaseError(f"case {case} failed (exit {e.returncode}); its error is above",
                                 e.returncode) from None
        return json.loads(Path(tmp, "case.json").read_text())


class BenchCaseError(Exception):
    """A case's process failed or timed out; main turns it into one error line and the case's exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--task", default="fpb")
    p.add_argument("--precision", default="nf4", help="training precision (FinLoRA's 4-bit recipe by default)")
    p.add_argument("--score-precision", default="auto", help="scoring precision (the kit's: auto)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=16, help="training steps per run (the first pays the compile)")
    p.add_argument("--dropouts", default="0.1,0", help="comma-separated LoRA dropouts to train with")
    p.add_argument("--n", type=int, default=200, help="test prompts scored per call")
    p.add_argument("--backend", default="inductor", choices=BACKENDS,
                   help="torch.compile backend (eager: dynamo only, for a quick check of the bench itself)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per case (each in its own process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="results file: figures, config, commit, machine "
                                                "(default: reports/bench/compile_gain.json)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)   # a child process's one case
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.case:
        return _child(a)
    for flag in ("rank", "batch", "n"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag}={getattr(a, flag)}: expected an integer >= 1")
    if a.steps < 3:
        p.error(f"--steps={a.steps}: expected an integer >= 3 (a first step and at least two steady ones)")
    if a.timeout <= 0:
        p.error(f"--timeout={a.timeout}: expected seconds > 0")
    try:
        dropouts = [float(d) for d in a.dropouts.split(",") if d.strip()]
    except ValueError:
        dropouts = []
    if not dropouts or not all(0 <= d < 1 for d in dropouts):
        p.error(f"--dropouts={a.dropouts!r}: expected comma-separated numbers in [0, 1), e.g. 0.1,0")
    from finlora_utils import config as cfg_mod, models, results

    commit = results.git_commit()   # the code the bench starts with (edits while it runs must not relabel it)
    for flag in ("precision", "score_precision"):
        value = getattr(a, flag)
        if value != cfg_mod.AUTO and value not in models.PRECISIONS:
            p.error(f"--{flag.replace('_', '-')}={value!r}: expected {cfg_mod.AUTO} or one of "
                    f"{', '.join(models.PRECISIONS)}")
    import torch

    from finlora_utils import data as data_module, hardware
    from finlora_utils.data import data_source
    from finlora_utils.data.hashes import file_hashes

    try:
        data_module.get_task(a.task)
    except ValueError as e:
        p.error(f"--task: {e}")
    print(f"machine: {results.environment()['hardware']['cpu']}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, backend {a.backend}" + hardware.caps_text(), flush=True)
    try:
        trains, score, summary = run_cases(a, dropouts, argv)
    except BenchCaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    from finlora_utils.paths import reports_dir

    out = Path(a.json) if a.json else reports_dir() / "bench" / "compile_gain.json"
    config = dict({k: v for k, v in vars(a).items() if k not in ("case", "out")}, json=None,
                  threads=torch.get_num_threads(), compile_train="each decoder layer, dynamic=True",
                  compile_score="the decoder's forward, dynamic=True",
                  compile_cache="cold (a fresh process and an empty cache folder per case)")
    doc = results.write_bench(out, "compile_gain", config, {"train": trains, "score": score}, seed=a.seed,
                               data_source=data_source(a.task), base_model=models.base_provenance(a.model),
                               data_files={s: file_hashes([a.task], s) for s in ("train", "test")}, portable=True,
                               commit=commit)
    print(f"\nresults: {out} (commit {doc['run_info']['git_commit']})")
    print("\n".join(summary))
    return 0


def run_cases(a, dropouts: list[float], argv: list[str]) -> tuple[dict, dict, list[str]]:
    """Every case, each in its own process: (training per dropout, scoring, the summary lines)."""
    summary, trains = [], {}
    for d in dropouts:
        eager, comp = (_spawn(f"train:{d}:{c}", argv, a.timeout) for c in (0, 1))
        ratio = eager["steady_median_s"] / comp["steady_median_s"]
        extra = comp["first_step_s"] - eager["first_step_s"]
        n = pays_after(extra, eager["steady_median_s"], comp["steady_median_s"], 1)
        loss_diff = max(abs(x - y) for x, y in zip(eager["losses"], comp["losses"]))
        trains[str(d)] = dict(eager=eager, compiled=comp, ratio=ratio, first_step_extra_s=extra,
                              pays_after_steps=n, max_loss_difference=loss_diff)
        print(f"train {a.precision} (amp {eager['amp_dtype']}), dropout {d}: first step "
              f"{eager['first_step_s']:.1f} s eager / {comp['first_step_s']:.1f} s compiled, median of the other "
              f"{a.steps - 1} {eager['steady_median_s']:.3f} / {comp['steady_median_s']:.3f} s, "
              f"losses differ by at most {loss_diff:.2e}", flush=True)
        summary.append(f"compile vs eager, train dropout {d:g}: {ratio:.2f}x per step, first step "
                       f"{extra:+.1f} s, pays after {_pays_text(n, 'steps')}")
    eager, comp = (_spawn(f"score:{c}", argv, a.timeout) for c in (0, 1))
    each_e, each_c = eager["second_call_s"] / eager["prompts"], comp["second_call_s"] / comp["prompts"]
    extra = comp["first_call_s"] - eager["first_call_s"]
    n = pays_after(extra, each_e, each_c, eager["prompts"])
    same = sum(x == y for x, y in zip(eager["predictions"], comp["predictions"]))
    score = dict(eager=eager, compiled=comp, ratio=each_e / each_c, first_call_extra_s=extra, pays_after_prompts=n,
                 same_predictions=same)
    layout = ("prepacked" if eager["prepacked_layers"] else f"plain layout: {eager['plain_layout_why']}")
    print(f"score {eager['prompts']} prompts: first call {eager['first_call_s']:.1f} s eager ({layout}) / "
          f"{comp['first_call_s']:.1f} s compiled, second {eager['second_call_s']:.2f} / "
          f"{comp['second_call_s']:.2f} s; {same} of {eager['prompts']} predictions the same")
    summary.append(f"compile vs eager, score: {each_e / each_c:.2f}x per prompt, first call {extra:+.1f} s, "
                   f"pays after {_pays_text(n, 'prompts')}")
    return trains, score, summary


if __name__ == "__main__":
    from finlora_utils.errors import cli_entry   # a user's mistake: one error line, exit 2

    sys.exit(cli_entry(main)())
