"""Evaluation speed: the paper's generate protocol vs label scoring, on the same FinLoRA test prompts.

    FINLORA_DATA_DIR=../shared/data .venv/bin/python bench/eval_speed.py            # 500 FPB prompts, auto precision
    .venv/bin/python bench/eval_speed.py --task nwgi --n 200 --precision fp32 --batch-size 8

Both modes get the same prompts, batch size, length-sorted batches and precision. generate is at its
best: batched, KV cache, greedy, max_new_tokens=10, stopping when every row has emitted EOS.
score is timed three times: plain (one forward per batch, last logits only), with the task's shared
instruction prefix run once and its KV cache expanded over the batch (the default), and that again with the
weights in their plain layout instead of laid out once for oneDNN (finlora_utils.prepack; generate and the
default score use the prepacked layout). With --repeats the modes run interleaved and the fastest repeat
of each counts (on a shared machine the slow repeats are other people's load). Then the FLOPs each mode
needs (finlora_utils.flops: score's shared prefix once, each prompt's own tokens and the LM head only where
a label's log-probability needs it; generate's prefill and one decode step per generated token up to its
EOS) over this machine's measured matmul peak give the MFU, and the ratio the machine allows: generate's
measured time over the time score's FLOPs take at the peak.
Last lines: `score speedup vs generate: X.XXx (this machine allows about Z.Zx)` and `score MFU: Y %`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from finlora_utils import data, evaluate as ev, flops, models, prepack, results as results_io
from finlora_utils.data.hashes import file_hashes
from finlora_utils.paths import reports_dir
from finlora_utils.config import resolve_precision
from finlora_utils.tokenization import common_prefix_len


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def needed_flops(model_name, tok, prompts, labels, outputs, max_new_tokens) -> tuple[dict, dict, int]:
    """(score FLOPs, generate FLOPs, mean own tokens per prompt after the shared prefix). Generated tokens
    per prompt: its decoded text re-tokenized plus the EOS, at most max_new_tokens."""
    split = [ev.split_label_tokens(tok, p, labels) for p in prompts]
    ctxs, conts = [c for c, _ in split], [c for _, c in split]
    score = flops.score_flops(model_name, ctxs, conts)
    new = [min(max_new_tokens, len(tok(o, add_special_tokens=False)["input_ids"]) + 1) for o in outputs]
    gen = flops.generate_flops(model_name, [len(ev.prompt_ids(tok, p)[0]) for p in prompts], new)
    shared = common_prefix_len(ctxs)
    return score, gen, round(sum(len(c) - shared for c in ctxs) / max(len(ctxs), 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--task", default="fpb")
    ap.add_argument("--n", type=int, default=500, help="test prompts (seeded stratified subsample)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precision", default="auto", choices=("auto",) + models.PRECISIONS,
                    help="auto: bf16 where the hardware computes it natively, else fp32")
    ap.add_argument("--max-new-tokens", type=int, default=ev.CLS_MAX_NEW_TOKENS)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the fastest of each mode counts")
    ap.add_argument("--json", default=None,
                    help="results file: figures, config, commit, machine (default: reports/bench/eval_speed.json)")
    args = ap.parse_args(argv)
    commit = results_io.git_commit()   # the code the bench starts with (edits while it runs must not relabel it)
    for name in ("n", "batch_size", "repeats", "max_new_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)}: expected an integer >= 1")
    if args.threads < 0:
        ap.error(f"--threads={args.threads}: expected >= 0 (0 = torch's default)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        task = data.get_task(args.task)
    except ValueError as e:
        ap.error(f"--task: {e}")
    if not task.labels:
        ap.error(f"--task={args.task}: expected a classification task (one with a label set)")
    ds = data.load_task(args.task, "test", max_samples=args.n, seed=0)
    prompts, gold, labels = list(ds["context"]), list(ds["target"]), list(task.labels)
    args.precision = resolve_precision(args.precision)
    model, tok = models.load_model(args.model, precision=args.precision)
    print(f"model={args.model} precision={args.precision} task={args.task} n={len(prompts)} "
          f"source={data.source_of(ds)} batch_size={args.batch_size} threads={torch.get_num_threads()} "
          f"device={next(model.parameters()).device}")

    bs = args.batch_size
    results = {}
    # Warm up kernels and allocator on a few prompts so no mode pays the first-call cost.
    ev.generate_texts(model, tok, prompts[:bs], bs, 2)
    ev.score_labels(model, tok, prompts[:bs], labels, bs)

    runs = {"generate": lambda: ev.generate_texts(model, tok, prompts, bs, args.max_new_tokens),
            "plain": lambda: ev.score_labels(model, tok, prompts, labels, bs, share_prefix=False),
            "shared": lambda: ev.score_labels(model, tok, prompts, labels, bs),
            "unpacked": lambda: ev.score_labels(model, tok, prompts, labels, bs, prepack=False)}
    times = {k: [] for k in runs}
    for _ in range(args.repeats):  # interleaved, so a busy spell on a shared machine hits every mode
        for k, fn in runs.items():
            out, t = timed(fn)
            times[k].append(t)
            results[k] = out
    t_gen, t_plain, t_score, t_unpacked = (min(times[k]) for k in runs)
    outs, plain, shared = results["generate"], results["plain"], results["shared"]
    gen_pred = [ev.parse_label(o, labels) for o in outs]

    def acc(pred):
        return ev.classification_metrics(gold, pred, labels)

    score_pred = [labels[j] for j in shared.argmax(1)]
    m_gen, m_plain, m_score = acc(gen_pred), acc([labels[j] for j in plain.argmax(1)]), acc(score_pred)
    n = len(prompts)
    print(f"{'mode':28s} {'accuracy':>8s} {'f1_w':>6s} {'unparseable':>11s} {'s/example':>9s}  predicted labels")
    for name, m, t in (("generate (max_new_tokens=%d)" % args.max_new_tokens, m_gen, t_gen),
                       ("score, plain forward", m_plain, t_plain), ("score, shared prefix KV", m_score, t_score)):
        print(f"{name:28s} {m['accuracy']:8.3f} {m['f1_weighted']:6.3f} {m['unparseable']:11d} {t / n:9.4f}  "
              f"{m['pred_distribution']}")
    same = int((plain.argmax(1) == shared.argmax(1)).sum())
    print(f"majority baseline {m_score['majority_baseline']:.3f}; score predictions identical with/without "
          f"prefix cache: {same}/{n} (max |dlogp| {np.abs(plain - shared).max():.2e}); "
          f"generate vs score agreement: {sum(a == b for a, b in zip(gen_pred, score_pred))}/{n}")
    info = prepack.decide(model, forwards=-(-n // bs))   # as score_labels decides
    laid_out = (f"{info['layers']} linear layers' weights laid out once for oneDNN ({info['bytes'] / 2**20:.0f} MiB)"
                if info["layers"] else f"weights not prepacked: {info['why']}")
    unpacked = results["unpacked"]
    same_layout = int((unpacked.argmax(1) == shared.argmax(1)).sum())
    print(f"{laid_out}; score with them {t_score:.1f} s, with the plain layout {t_unpacked:.1f} s "
          f"({t_unpacked / t_score:.2f}x); predictions identical: {same_layout}"
          f"/{n} (max |dlogp| {np.abs(unpacked - shared).max():.2e}); generate uses them too")
    print("seconds per repeat: " + "; ".join(f"{k} " + ", ".join(f"{t:.1f}" for t in v) for k, v in times.items()))
    print(f"plain score speedup vs generate: {t_gen / t_plain:.2f}x")
    f_score, f_gen, own = needed_flops(args.model, tok, prompts, labels, outs, args.max_new_tokens)
    peak = flops.measure_peak(args.model, tokens=bs * own, dtype=flops.compute_dtype(args.precision))
    at_peak = f_score["total"] / peak["peak"]
    print(f"{flops.peak_summary(peak)}")
    print(f"needed GFLOP: score {f_score['total'] / 1e9:.1f} (LM head {f_score['head'] / 1e9:.1f}), generate "
          f"{f_gen['total'] / 1e9:.1f} (LM head {f_gen['head'] / 1e9:.1f}): {f_gen['total'] / f_score['total']:.1f}x "
          f"at equal MFU; generate MFU {100 * flops.mfu(f_gen['total'], t_gen, peak['peak']):.1f} %, score at the "
          f"peak would take {at_peak:.2f} s")
    figures = dict(score_speedup=t_gen / t_score, allowed_speedup=t_gen / at_peak, plain_score_speedup=t_gen / t_plain,
                   prepack_speedup=t_unpacked / t_score,
                   score_mfu=flops.mfu(f_score["total"], t_score, peak["peak"]),
                   generate_mfu=flops.mfu(f_gen["total"], t_gen, peak["peak"]), identical_with_prefix_cache=same,
                   identical_with_plain_layout=same_layout,
                   n=n, accuracy={k: m["accuracy"] for k, m in (("generate", m_gen), ("plain", m_plain),
                                                                   ("shared", m_score))})
    out = Path(args.json) if args.json else reports_dir() / "bench" / "eval_speed.json"
    doc = results_io.write_bench(out, "eval_speed", vars(args), dict(
        seconds=times, figures=figures, flops={"score": f_score, "generate": f_gen}, peak=peak, prepack=info),
        data_source=data.source_of(ds), base_model=models.base_provenance(args.model),
        data_files=file_hashes([args.task], "test"), portable=True, commit=commit)
    print(f"results: {out} (commit {doc['run_info']['git_commit']})")
    print(f"score speedup vs generate: {t_gen / t_score:.2f}x (this machine allows about {t_gen / at_peak:.1f}x)")
    print(f"score MFU: {100 * figures['score_mfu']:.1f} %")


if __name__ == "__main__":
    from finlora_utils.errors import cli_entry   # a user's mistake: one error line, exit 2

    sys.exit(cli_entry(main)())
