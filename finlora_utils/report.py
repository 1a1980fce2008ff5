"""The final report, built only from reports/results/*.json (no model is loaded).

    runs = report.load("reports/results")
    report.paper_layout(runs, "accuracy")     # rows tasks, columns base / 16-bit r8 / 8-bit r8 / 4-bit r4
    report.efficiency_table(runs)             # peak memory, train time, adapter size, s/example, paper-scale cost
    report.header(runs)                       # what ran: model, data, preset, hardware, versions, commit

Every table is a pandas DataFrame; plots' fig_* builders take those frames and return matplotlib figures
(notebooks save them with plots.save_figure, PNG + CSV). A results file that lacks a field a table
needs raises ResultsError naming the file and the field.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .config import PRECISION
from .results import ResultsError, get_field, load_results

PAPER_RESULTS = Path(__file__).resolve().parent / "paper_results.json"
CONFIG_ORDER = ("base", "base calibrated", "16-bit r8", "32-bit r8", "8-bit r8", "4-bit r4")
# precision='auto' trains the unquantized baseline in fp32 on CPUs without native bf16: it stands in for
# the paper's 16-bit r8 in the side-by-side table (ours_config says which one ran)
STANDS_IN_FOR = {"16-bit r8": "32-bit r8"}
PAPER_MODEL = "llama-3.1-8b"
# What the cost estimate assumes about "the paper's setting" (FinLoRA: Llama-3.1-8B on 4 GPUs, DDP).
PAPER_SETTING = dict(model=PAPER_MODEL, gpus=4, parallel="ddp", sustained_tflops=50.0, usd_per_gpu_hour=1.0,
                     params=8.03e9)


# ------------------------------------------------------------------ loading and checking

def load(results_dir: str | Path, require: Iterable[str] = ("run_id", "run_info.config", "meta_info")) -> list[dict]:
    """All results files of a folder (sorted by run id); a missing field names the file and the field."""
    d = Path(results_dir)
    if not d.is_dir():
        raise ResultsError(f"{d}: results folder not found; run the study notebooks (03_finetune, 05_evaluation) first")
    return load_results(d, require)


def of_model(runs: Sequence[dict], model: str) -> list[dict]:
    """The runs of one base model (all when model is empty); a model none of them used is named with the ones
    there (a typo said 'no results files: nothing ran' of a folder full of them)."""
    if not model:
        return list(runs)
    there = sorted({str(r["run_info"]["config"].get("model")) for r in runs})
    if runs and model not in there:
        raise ResultsError(f"MODEL={model!r}: no results of that model; the results are of {', '.join(there)} "
                           "(MODEL = \"\" reports them all)")
    return [r for r in runs if r["run_info"]["config"].get("model") == model]


def require(runs: Sequence[dict], fields: Iterable[str]) -> None:
    """Every run has every dotted field (e.g. 'train_info.peak_mem_bytes'), else ResultsError(file, field)."""
    for r in runs:
        for f in fields:
            get_field(r, f, r.get("_path", r.get("run_id", "<results>")))


def is_trained(run: dict) -> bool:
    return bool(run.get("train_info"))


def config_label(run: dict) -> str:
    """'base' for zero-shot results, else '<bits>-bit r<rank>[ <variant>][ multi-task][ <tag>]' from run_info.config."""
    if not is_trained(run):
        return "base"
    path = run.get("_path", run.get("run_id"))
    cfg = get_field(run, "run_info.config", path)
    prec = get_field(run, "run_info.config.precision", path)
    rank = get_field(run, "run_info.config.lora.rank", path)
    label = f"{PRECISION[prec].bits if prec in PRECISION else prec}-bit r{rank}"
    variant = (cfg.get("lora") or {}).get("variant", "lora")
    if variant != "lora":
        label += f" {variant}"
    if len(cfg.get("tasks") or []) > 1:   # one adapter over a task mix must not average with single-task ones
        label += " multi-task"
    if cfg.get("variant_tag"):
        label += f" {cfg['variant_tag']}"
    return label


def config_order(labels: Iterable[str]) -> list[str]:
    labels = list(dict.fromkeys(labels))
    known = [c for c in CONFIG_ORDER if c in labels]
    return known + sorted(c for c in labels if c not in CONFIG_ORDER)


# ------------------------------------------------------------------ accuracy tables

EVAL_FIELDS = ("mode", "n", "accuracy", "pred_distribution", "majority_baseline")
# extraction / generation tasks (XBRL values, FinanceBench) have no label set: no distribution, no majority
OPEN_EVAL_FIELDS = ("mode", "n", "accuracy")


def _metric_row(e: dict) -> dict:
    dist = e.get("pred_distribution", {})
    top, top_n = max(dist.items(), key=lambda kv: kv[1]) if dist else (None, 0)
    return dict(n=e.get("n"), accuracy=e.get("accuracy"), f1_weighted=e.get("f1_weighted"), f1_macro=e.get("f1_macro"),
                f1_weighted_finlora=e.get("f1_weighted_finlora"),
                majority_baseline=e.get("majority_baseline"), majority_label=e.get("majority_label"),
                majority_f1_weighted=e.get("majority_f1_weighted"), top_pred=top,
                top_pred_share=(top_n / e["n"]) if e.get("n") else None,
                pred_distribution=json.dumps(dist, sort_keys=True), unparseable=e.get("unparseable", 0),
                exact_match=e.get("exact_match"), numeric_accuracy=e.get("numeric_accuracy"), token_f1=e.get("token_f1"))


def eval_table(runs: Sequence[dict], all_modes: bool = True) -> pd.DataFrame:
    """One row per (run, task, mode) with the metrics and the sanity columns beside them.

    NWGI results also give a row 'nwgi (3-class)': the 7 grades folded into negative/neutral/positive."""
    rows = []
    for r in runs:
        path = r.get("_path", r["run_id"])
        trained_on = r["run_info"]["config"].get("tasks") or []
        for task, entry in (r.get("eval_info") or {}).items():
            open_ended = isinstance(entry, dict) and entry.get("kind", "classification") != "classification"
            for f in OPEN_EVAL_FIELDS if open_ended else EVAL_FIELDS:
                get_field(r, f"eval_info.{task}.{f}", path)
            modes = entry.get("modes") if all_modes and entry.get("modes") else {entry["mode"]: entry}
            for asked, e in modes.items():
                mode = e.get("mode", asked)   # an extraction task asked for `score` is generated: say so
                common = dict(run_id=r["run_id"], model=r["run_info"]["config"].get("model"), config=config_label(r),
                              mode=mode, primary=mode == entry["mode"],
                              own_task=not is_trained(r) or task in trained_on,
                              s_per_example=e.get("s_per_example"), eval_precision=entry.get("precision"),
                              data_source=e.get("data_source") or r["run_info"].get("data_source"),
                              agreement=entry.get("generate_score_agreement"))
                rows.append(dict(common, task=task, **_metric_row(e)))
                if e.get("nwgi_3class"):
                    rows.append(dict(common, task=f"{task} (3-class)", **_metric_row(e["nwgi_3class"])))
    return pd.DataFrame(rows)


def paper_layout(runs: Sequence[dict], metric: str = "accuracy", mode: str | None = None) -> pd.DataFrame:
    """Rows = tasks (model/task if several models), columns = configurations in the paper's order,
    plus the majority-class baseline so a degenerate 'base' is never the only reference.

    mode=None uses each result's primary mode (score for classification by default)."""
    df = eval_table(runs)
    if df.empty:
        raise ResultsError("no results with eval_info: run 05_evaluation first")
    if metric not in df.columns:
        raise ValueError(f"metric={metric!r}: expected one of accuracy, f1_weighted, f1_macro, exact_match")
    df = df[df["mode"] == mode] if mode else df[df["primary"]]
    df = df[df["own_task"]]  # an adapter counts for the tasks it was trained on (transfer stays in eval_table)
    if df.empty:
        raise ResultsError(f"no results in mode {mode!r} for the tasks the runs were trained on")
    index = ["model", "task"] if df["model"].nunique() > 1 else ["task"]
    table = df.pivot_table(index=index, columns="config", values=metric, aggfunc="first")
    table = table[config_order(table.columns)]
    # The majority-class predictor scored with the same metric (its weighted F1 for an F1 table).
    base_col = {"f1_weighted": "majority_f1_weighted"}.get(metric, "majority_baseline")
    table["majority baseline"] = df.groupby(index)[base_col].first()
    table.columns.name = None
    return table


def sanity_table(runs: Sequence[dict]) -> pd.DataFrame:
    """For each (task, configuration, mode): accuracy beside the majority baseline and what was predicted."""
    df = eval_table(runs)
    cols = ["task", "config", "mode", "n", "accuracy", "f1_weighted", "majority_baseline", "top_pred",
            "top_pred_share", "unparseable", "pred_distribution"]
    return df[cols].sort_values(["task", "config", "mode"]).reset_index(drop=True)


ZERO_SHOT_FIELDS = ("n", "accuracy")   # the stderr needs both; the other columns are None where a file lacks them


def zero_shot_table(runs: Sequence[dict]) -> pd.DataFrame:
    """One row per (zero-shot base result, task), in the order given: the precision it was loaded at, n,
    accuracy, f1_weighted, majority (baseline), s (wall seconds) and stderr = sqrt(acc (1 - acc) / n), the
    binomial standard error that says which precision differences are sampling noise. Trained runs are skipped."""
    rows = []
    for r in runs:
        if is_trained(r):
            continue
        path = r.get("_path", r["run_id"])
        for task, e in (r.get("eval_info") or {}).items():
            for f in ZERO_SHOT_FIELDS:
                get_field(r, f"eval_info.{task}.{f}", path)
            rows.append(dict(precision=e.get("precision") or get_field(r, "run_info.config.precision", path),
                             task=task, n=e["n"], accuracy=e["accuracy"], f1_weighted=e.get("f1_weighted"),
                             majority=e.get("majority_baseline"), s=e.get("wall_s")))
    zero = pd.DataFrame(rows, columns=["precision", "task", "n", "accuracy", "f1_weighted", "majority", "s"])
    zero["stderr"] = np.sqrt(zero["accuracy"] * (1 - zero["accuracy"]) / zero["n"])
    return zero


# ------------------------------------------------------------------ efficiency

TRAIN_FIELDS = ("train_info.wall_s", "train_info.peak_mem_bytes", "train_info.adapter_bytes")


def paper_cost(tokens: float, grad_checkpointing: bool = False, **overrides) -> dict:
    """GPU-hours and cost to train `tokens` tokens of LoRA on the paper's model.

    FLOPs per token: forward 2N + backward 2N (input gradients only: the base is frozen), + 2N when
    gradient checkpointing recomputes the forward; divided by an assumed sustained throughput per GPU.
    All assumptions are in PAPER_SETTING and returned with the numbers.
    """
    s = {**PAPER_SETTING, **overrides}
    flops = tokens * (6 if grad_checkpointing else 4) * s["params"]
    gpu_hours = flops / (s["sustained_tflops"] * 1e12) / 3600
    return {"gpu_hours": gpu_hours, "cost_usd": gpu_hours * s["usd_per_gpu_hour"],
            "assumptions": {k: s[k] for k in ("model", "sustained_tflops", "usd_per_gpu_hour", "params")}}


def paper_memory(run: dict) -> float | None:
    """Peak GiB per GPU the planner predicts for this run's config on the paper's model and GPUs."""
    from . import memory

    cfg = run["run_info"]["config"]
    lo = cfg.get("lora") or {}
    # on the paper's GPUs an fp32 run of ours is its 16-bit one
    bits = PRECISION.get(cfg.get("precision"), PRECISION["bf16"]).planner_bits
    try:
        p = memory.plan(model=PAPER_SETTING["model"], bits=bits, rank=lo.get("rank"), targets=tuple(lo.get("targets") or
                        ("q_proj", "k_proj", "v_proj")), seq_len=cfg.get("max_seq_len", 512),
                        batch=cfg.get("batch_size", 8), grad_checkpointing=cfg.get("grad_checkpointing") == "on",
                        label_only_logits=bool(cfg.get("label_only_logits")), gpus=PAPER_SETTING["gpus"],
                        parallel=PAPER_SETTING["parallel"], variant=lo.get("variant", "lora"))
    except Exception:  # noqa: BLE001 - a config the planner cannot price shows as missing, not as a crash
        return None
    return p.total_gib


def measured_peak_bytes(run: dict) -> int:
    """The run's peak training memory as stored (memory.PEAK_DEFINITION in results written since it was
    introduced): the most loaded rank's for DDP / pipeline runs, like the planner's most loaded device."""
    ti = run["train_info"]
    ranks = [r.get("peak_mem_bytes") for r in (ti.get("parallel") or {}).get("ranks") or []]
    ranks = [r for r in ranks if r is not None]
    return max(ranks) if ranks and peak_measures(run) != WHOLE_PROCESS else ti["peak_mem_bytes"]


LIVE_PEAK, HEAP_KEPT, WHOLE_PROCESS = "training phase", "training phase, heap kept", "whole process"


def peak_measures(run: dict) -> str:
    """What train_info.peak_mem_bytes measures: 'training phase' (above the loaded process, live tensors:
    what the planner predicts), 'training phase, heap kept' (a cpu_memory='fast' run: also the freed memory
    glibc keeps, which the planner does not predict) or 'whole process' (results written before the
    training-phase definition: the loop's VmHWM incl. the process)."""
    from .memory import is_live_peak, is_training_phase

    ti = run["train_info"]
    if not is_training_phase(ti):
        return WHOLE_PROCESS
    return LIVE_PEAK if is_live_peak(ti) else HEAP_KEPT


def _run_plan(run: dict):
    """The planner at the run's own largest batch (train_info.memory_plan); older results without it are
    priced at the configured max_seq_len and batch_size. None for a model the planner cannot read."""
    from . import memory

    cfg, ti = run["run_info"]["config"], run["train_info"]
    shape = ti.get("memory_plan") or dict(
        seq_len=cfg.get("max_seq_len", 512), batch=cfg.get("batch_size", 8),
        grad_checkpointing=cfg.get("grad_checkpointing") == "on",
        device="cuda" if (run.get("meta_info") or {}).get("hardware", {}).get("gpus") else "cpu")
    try:
        return memory.run_plan(cfg, shape)
    except Exception:  # noqa: BLE001 - e.g. a hub model whose config is not stored: shown as missing
        return None


def planner_check(runs: Sequence[dict]) -> pd.DataFrame:
    """Per finetuned run: measured peak training memory beside the planner's prediction of the same
    quantity (training phase above the loaded process, most loaded rank), and the error in %."""
    rows = []
    for r in runs:
        if not is_trained(r):
            continue
        p = _run_plan(r)
        measured = measured_peak_bytes(r) / 2 ** 20
        like = peak_measures(r) == LIVE_PEAK
        planned = p.training_bytes / 2 ** 20 if p is not None else None
        rows.append(dict(run_id=r["run_id"], config=config_label(r), measures=peak_measures(r),
                         method=r["train_info"].get("peak_mem_method"), measured_mib=measured, planned_mib=planned,
                         error_pct=100 * (planned - measured) / measured if like and planned and measured else None,
                         process_peak_mib=(r["train_info"].get("process_peak_mem_bytes") or 0) / 2 ** 20 or None))
    return pd.DataFrame(rows, columns=["run_id", "config", "measures", "method", "measured_mib", "planned_mib",
                                       "error_pct", "process_peak_mib"])


def efficiency_table(runs: Sequence[dict]) -> pd.DataFrame:
    """One row per finetuned run: measured memory/time/size, evaluation speed, and paper-scale estimates.

    peak_mem_mib is the peak training memory (memory.PEAK_DEFINITION: training phase above the loaded
    process, most loaded rank; peak_mem_measures says 'whole process' for older results), beside the
    planner's prediction of the same quantity (planned_peak_mib, planner_error_pct) and the whole-process
    peak (process_peak_mib)."""
    trained = [r for r in runs if is_trained(r)]
    require(trained, TRAIN_FIELDS)
    rows = []
    for r in trained:
        ti, cfg = r["train_info"], r["run_info"]["config"]
        evals = [e for e in (r.get("eval_info") or {}).values() if e.get("s_per_example") is not None]
        tokens = ti.get("nonpad_tokens") or ti.get("tokens") or 0
        cost = paper_cost(tokens, cfg.get("grad_checkpointing") == "on")
        rows.append(dict(
            run_id=r["run_id"], config=config_label(r), model=cfg.get("model"), tasks=",".join(cfg.get("tasks", [])),
            peak_mem_mib=measured_peak_bytes(r) / 2 ** 20, peak_mem_measures=peak_measures(r),
            peak_mem_method=ti.get("peak_mem_method"),
            process_peak_mib=(ti.get("process_peak_mem_bytes") or 0) / 2 ** 20 or None,
            train_s=ti["wall_s"], steps=ti.get("steps"), tokens_per_s=ti.get("tokens_per_s"),
            adapter_kib=ti["adapter_bytes"] / 1024,
            eval_s_per_example=sum(e["s_per_example"] for e in evals) / len(evals) if evals else None,
            paper_peak_gib_per_gpu=paper_memory(r), paper_gpu_hours=cost["gpu_hours"], paper_cost_usd=cost["cost_usd"]))
    df = pd.DataFrame(rows)
    if len(df):   # the planner's prediction of the same quantity (training phase) beside the measured peak
        chk = planner_check(trained).set_index("run_id")
        df["planned_peak_mib"] = df["run_id"].map(chk["planned_mib"])
        df["planner_error_pct"] = df["run_id"].map(chk["error_pct"])
    return df


def accuracy_vs_memory(runs: Sequence[dict], task: str | None = None) -> pd.DataFrame:
    """Per finetuned run and task: measured peak memory and primary-mode accuracy."""
    eff = efficiency_table(runs)
    ev = eval_table(runs)
    if eff.empty or ev.empty:
        return pd.DataFrame(columns=["run_id", "config", "task", "peak_mem_mib", "accuracy"])
    ev = ev[ev["primary"] & ev["own_task"]]
    df = eff[["run_id", "config", "peak_mem_mib"]].merge(ev[["run_id", "task", "accuracy", "f1_weighted"]], on="run_id")
    return df[df["task"] == task] if task else df


def loss_curves(runs: Sequence[dict]) -> pd.DataFrame:
    rows = []
    for r in runs:
        if is_trained(r):
            curve = r["train_info"].get("loss_curve") or []
            rows += [dict(run_id=r["run_id"], config=config_label(r), step=s, loss=l) for s, l in curve]
    return pd.DataFrame(rows, columns=["run_id", "config", "step", "loss"])


def memory_breakdown(runs: Sequence[dict]) -> pd.DataFrame:
    """Per finetuned run: the planner's training-phase components (memory.TRAINING_PHASE) at the run's own
    largest batch, and the measured peak training memory beside them (component 'measured peak'; its
    `measures` says 'whole process' for results written before the training-phase definition)."""
    from . import memory

    rows = []
    for r in runs:
        if not is_trained(r):
            continue
        p = _run_plan(r)
        worst = max(p.per_device, key=lambda d: d["training_bytes"])["breakdown"] if p is not None else {}
        for k, v in worst.items():
            if k in memory.TRAINING_PHASE:
                rows.append(dict(run_id=r["run_id"], config=config_label(r), component=k, mib=v / 2 ** 20,
                                 kind="planned", measures=LIVE_PEAK))
        rows.append(dict(run_id=r["run_id"], config=config_label(r), component="measured peak",
                         mib=measured_peak_bytes(r) / 2 ** 20, kind="measured", measures=peak_measures(r)))
    return pd.DataFrame(rows, columns=["run_id", "config", "component", "mib", "kind", "measures"])


# ------------------------------------------------------------------ the paper side by side

def paper_results(path: str | Path = PAPER_RESULTS) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def paper_comparison(runs: Sequence[dict], paper: dict | None = None, all_tasks: bool = False) -> pd.DataFrame:
    """Rows (task, configuration): our accuracy (%) / weighted F1 (primary mode) beside the paper's.

    Only the paper's tasks that were evaluated here, unless all_tasks (then missing ones show as empty)."""
    paper = paper or paper_results()
    ev = eval_table(runs)
    done = set(ev["task"]) if not ev.empty else set()
    cols = ["accuracy", "f1_weighted", "mode", "model"]
    ours = pd.DataFrame() if ev.empty else ev[ev["primary"] & ev["own_task"]].groupby(["task", "config"])[cols].first()
    rows = []
    for task, by_cfg in paper["results"].items():
        if not all_tasks and task not in done:
            continue
        for cfg in paper["configurations"]:
            p = by_cfg.get(cfg, {})
            mine = cfg if (task, cfg) in ours.index else STANDS_IN_FOR.get(cfg, cfg)
            o = ours.loc[(task, mine)] if (task, mine) in ours.index else None
            rows.append(dict(task=task, config=cfg, ours_config=None if o is None else mine,
                             ours_accuracy=None if o is None else 100 * o["accuracy"],
                             ours_f1_weighted=None if o is None else o["f1_weighted"],
                             ours_model=None if o is None else o["model"], ours_mode=None if o is None else o["mode"],
                             paper_accuracy=p.get("accuracy"), paper_f1_weighted=p.get("f1_weighted"),
                             paper_source=p.get("source")))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ what ran

def header(runs: Sequence[dict]) -> dict:
    """Model, data, preset, hardware, versions and commit of the runs behind the report (distinct values)."""
    if not runs:
        raise ResultsError("no results files: nothing ran; run the study first (python -m finlora_utils.study all)")
    require(runs, ("run_info.config.model", "meta_info.packages", "meta_info.hardware"))

    def distinct(values):
        c = Counter(v for v in values if v is not None)
        return ", ".join(f"{v}" + (f" ({n} runs)" if len(c) > 1 else "") for v, n in c.most_common()) or "unknown"

    hw = [r["meta_info"]["hardware"] for r in runs]
    pk = [r["meta_info"]["packages"] for r in runs]
    return {
        "runs": f"{len(runs)} ({sum(map(is_trained, runs))} finetuned, {len(runs) - sum(map(is_trained, runs))} base)",
        "model": distinct(r["run_info"]["config"]["model"] for r in runs),
        "data": distinct(r["run_info"].get("data_source") for r in runs),
        "preset": distinct(r["run_info"].get("preset") for r in runs),
        "hardware": distinct((h.get("gpu") or f"CPU: {h.get('cpu')} x{h.get('cpu_count')}{isa_cap(h)}") for h in hw),
        "versions": distinct(", ".join(f"{k} {p.get(k)}" for k in ("torch", "transformers", "peft", "bitsandbytes"))
                             for p in pk),
        "python": distinct(r["meta_info"].get("python") for r in runs),
        "base weights": distinct(base_weights(r) for r in runs),
        "commit": distinct(r["run_info"].get("git_commit") for r in runs),
        "created": f"{min(r['run_info'].get('created') or '' for r in runs)} .. "
                   f"{max(r['run_info'].get('created') or '' for r in runs)}",
    }


def machine(run: dict) -> str:
    """The device a run computed on, short enough for a cell or a figure: its GPU, else its CPU's model name
    without the trademark marks ('Intel Xeon', 'AMD EPYC'), and the instruction-set cap it ran under, if any (a
    Zen 4 capped at AVX2 stands in for an AVX2-only CPU and must say so)."""
    hw = (run.get("meta_info") or {}).get("hardware") or {}
    if hw.get("gpu"):
        return str(hw["gpu"])
    name = re.sub(r"\((R|TM|tm)\)|\bProcessor\b|\bCPU\b|@.*$", " ", str(hw.get("cpu") or "unknown machine"))
    name = " ".join(name.split()) or "unknown machine"
    return name + isa_cap(hw)


def isa_cap(hardware: dict) -> str:
    """' capped at AVX2' where a result's process ran under an instruction-set cap (results.environment), else ''.
    oneDNN's cap comes first (it decides bf16 matmul speed); its ALL / DEFAULT mean no cap."""
    caps = {k: v for k, v in (hardware.get("isa_caps") or {}).items()
            if not (k in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA") and v.upper() in ("ALL", "DEFAULT"))}
    cap = next((caps[k] for k in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                                  "MKL_ENABLE_INSTRUCTIONS") if caps.get(k)), None)
    return f" capped at {cap.upper()}" if cap else ""


def figure_note(runs: Sequence[dict]) -> str:
    """What a figure over these runs must say beside its numbers: the machines they came from (with how many runs
    each, where they differ) and, for the embedded model, that its '16-bit' baseline is a dequantized Q4_1 model."""
    counts = Counter(machine(r) for r in runs)
    machines = ", ".join(f"{m} ({n} run{'s' * (n > 1)})" if len(counts) > 1 else m for m, n in counts.most_common())
    note = f"machines: {machines or 'unknown'}"
    if any(r["run_info"]["config"].get("model") == "embedded" for r in runs):
        note += "; base: embedded SmolLM2-135M-Instruct, its '16-bit' = the Q4_1 GGUF dequantized"
    return note


def base_weights(run: dict) -> str:
    """How the base weights were stored, from meta_info.base_model (models.base_provenance): for the embedded
    model, that its 'unquantized' baseline is a dequantized Q4_1 model."""
    prov = (run.get("meta_info") or {}).get("base_model")
    if not prov:
        if run["run_info"]["config"].get("model") == "embedded":   # files written before provenance was recorded
            from .models import EMBEDDED_CAVEAT

            return f"embedded (not recorded in this file; the shipped GGUF says: {EMBEDDED_CAVEAT})"
        return "not recorded"
    if prov.get("by_kind"):
        kinds = ", ".join(f"{k} {v}" for k, v in prov["by_kind"].items())
        return (f"{prov.get('id', prov.get('name'))} from {prov.get('source')}: {kinds}; the fp32/bf16 baseline "
                "is these quantized weights dequantized (a 4-bit model), not an original 16-bit checkpoint")
    return f"{prov.get('id', prov.get('name'))}: {prov.get('weights') or prov.get('source')}" + (
        f", {prov['dtype']}" if prov.get("dtype") else "")


def header_markdown(runs: Sequence[dict]) -> str:
    h = header(runs)
    return "| what ran | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in h.items())


def confusion_frame(entry: dict) -> pd.DataFrame:
    """An eval_info entry's confusion matrix as a frame (rows gold, columns predicted)."""
    labels = entry["confusion_labels"]
    return pd.DataFrame(entry["confusion"], index=pd.Index(labels, name="gold"), columns=labels)


def confusion_long(runs: Sequence[dict]) -> pd.DataFrame:
    """Every primary-mode confusion matrix in long form (for the figure's CSV)."""
    rows = []
    for r in runs:
        for task, e in (r.get("eval_info") or {}).items():
            if "confusion" not in e:
                continue
            cm = confusion_frame(e)
            for g in cm.index:
                for p in cm.columns:
                    rows.append(dict(run_id=r["run_id"], config=config_label(r), task=task, mode=e["mode"],
                                     gold=g, predicted=p, count=int(cm.loc[g, p])))
    return pd.DataFrame(rows, columns=["run_id", "config", "task", "mode", "gold", "predicted", "count"])


def run_summary(runs: Sequence[dict]) -> pd.DataFrame:
    """One line per run: id, configuration, base model, training tasks, tasks evaluated so far."""
    return pd.DataFrame([dict(run_id=r["run_id"], config=config_label(r), model=r["run_info"]["config"].get("model"),
                              trained_on=",".join(r["run_info"]["config"].get("tasks") or []) if is_trained(r) else "",
                              evaluated=",".join(r.get("eval_info") or {})) for r in runs],
                        columns=["run_id", "config", "model", "trained_on", "evaluated"])


# ------------------------------------------------------------------ the paper's claims, one row each

VERDICTS = ("holds", "does not hold", "not measurable here")
CLOSE_POINTS = 5.0        # "within a few points": |accuracy difference| <= 5 percentage points
MEMORY_CUT_HOLDS = 0.5    # "cuts training memory" holds when 4-bit needs at most half the 16-bit peak
SMALL_ADAPTER_MB = 100.0  # "small (MB)": every adapter under 100 MB
SIXTEEN_BIT = ("16-bit r8", "32-bit r8")   # precision 'auto' resolves to bf16 or fp32: both stand for 16-bit


def _task_metric(row) -> tuple[float, str]:
    """A task's headline number: accuracy for label sets, token F1 for generated answers (exact match of free
    text is ~0 for any model; FinLoRA scores those with BERTScore)."""
    if pd.notna(row.get("token_f1")) and pd.notna(row.get("exact_match")):
        return row["token_f1"], "token F1"
    return row["accuracy"], "accuracy"


def eval_table_seeded(runs: Sequence[dict]) -> pd.DataFrame:
    """eval_table with each row's seed and results file (the same run id recurs in every point of a sweep)."""
    parts = [eval_table([r]).assign(seed=(r.get("run_info") or {}).get("seed"), path=r.get("_path", r["run_id"]))
             for r in runs if r.get("eval_info")]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def seeded_scores(runs: Sequence[dict]) -> pd.DataFrame:
    """One row per (task, configuration, seed): the primary-mode headline number of each adapter on its own
    tasks and of the base; the same base evaluation repeated by several points counts once."""
    ev = eval_table_seeded(runs)
    if ev.empty:
        return pd.DataFrame(columns=["task", "config", "seed", "score", "metric", "n", "accuracy",
                                     "majority_baseline"])
    ev = ev[ev["primary"] & ev["own_task"]].copy()
    scored = [_task_metric(row) for row in ev.to_dict("records")]
    ev["score"] = [s for s, _ in scored]
    ev["metric"] = [m for _, m in scored]
    return ev.drop_duplicates(subset=["task", "config", "seed", "n", "mode", "model"]).reset_index(drop=True)


def _mean_std(values) -> str:
    v = pd.Series(list(values), dtype=float)
    return f"{v.mean():.3f}" + (f" ± {v.std():.3f} (n={len(v)})" if len(v) > 1 else "")


def _paper_pairs(paper: dict, a: str, b: str) -> list[tuple[str, float]]:
    """(task, paper[a] - paper[b]) in accuracy points for every task where the paper has both."""
    out = []
    for task, by in paper["results"].items():
        x, y = (by.get(a) or {}).get("accuracy"), (by.get(b) or {}).get("accuracy")
        if x is not None and y is not None:
            out.append((task, x - y))
    return out


def _claim(claim, paper_fig, ours, verdict, why, figure=None) -> dict:
    assert verdict in VERDICTS, verdict
    return dict(claim=claim, paper=paper_fig, ours=ours, verdict=verdict, why=why, figure=figure)


def _claim_finetuned_beats_base(sc: pd.DataFrame, paper: dict, link) -> dict:
    claim = "A finetuned adapter beats the zero-shot base on every task"
    pp = [(t, d, c) for c in ("8-bit r8", "4-bit r4") for t, d in _paper_pairs(paper, c, "base")]
    worst = min(pp, key=lambda x: x[1]) if pp else None
    paper_fig = (f"{sum(d > 0 for _, d, _ in pp)}/{len(pp)} task × adapter pairs; smallest margin "
                 f"{worst[1]:+.2f} pts ({worst[0]}, {worst[2]})") if pp else "—"
    base = sc[sc["config"] == "base"].groupby("task")["score"]
    ft = sc[~sc["config"].str.startswith("base")]
    rows = []
    for (task, cfg), g in ft.groupby(["task", "config"]):
        if task in base.groups:
            b = base.get_group(task)
            rows.append((task, cfg, g["score"].mean() - b.mean(), g, b, g["metric"].iloc[0]))
    if not rows:
        return _claim(claim, paper_fig, "no task has both a zero-shot base and an adapter result",
                      "not measurable here", "evidence missing: run 03_finetune and 05_evaluation on a task "
                      "(base and adapters)", link)
    wins = sum(d > 0 for _, _, d, _, _, _ in rows)
    t, c, d, g, b, metric = min(rows, key=lambda x: x[2])
    seeded = [r for r in rows if len(r[3]) > 1]
    extra = "".join(f"; {r[0]} {r[1]} {_mean_std(r[3]['score'])} vs base {_mean_std(r[4])}" for r in seeded[:2])
    ours = (f"{wins}/{len(rows)} task × adapter pairs; smallest margin {d:+.3f} ({t}, {c}: "
            f"{_mean_std(g['score'])} vs {_mean_std(b)}, {metric}){extra}")
    verdict = "holds" if wins == len(rows) else "does not hold"
    why = ("every adapter is above the base on its own task (accuracy; token F1 for generated answers)"
           if wins == len(rows) else f"{len(rows) - wins} pair(s) at or below the base, e.g. {t} {c}")
    return _claim(claim, paper_fig, ours, verdict, why, link)


def _claim_4bit_close_to_8bit(sc: pd.DataFrame, paper: dict, link) -> dict:
    claim = f"4-bit r4 is within a few points (≤ {CLOSE_POINTS:g}) of 8-bit r8"
    pp = _paper_pairs(paper, "4-bit r4", "8-bit r8")
    worst = max(pp, key=lambda x: abs(x[1])) if pp else None
    paper_fig = (f"largest |Δ| {abs(worst[1]):.2f} pts ({worst[0]}); Δ over {len(pp)} tasks "
                 f"{min(d for _, d in pp):+.2f} .. {max(d for _, d in pp):+.2f}") if pp else "—"
    acc = sc[sc["config"].isin(["4-bit r4", "8-bit r8"]) & (sc["metric"] == "accuracy")]
    piv = acc.pivot_table(index=["task", "seed"], columns="config", values="score", aggfunc="mean").dropna()
    if piv.empty or {"4-bit r4", "8-bit r8"} - set(piv.columns):
        return _claim(claim, paper_fig, "no task with both a 4-bit r4 and an 8-bit r8 adapter",
                      "not measurable here", "evidence missing: train both configurations on a task", link)
    diff = 100 * (piv["4-bit r4"] - piv["8-bit r8"])
    by_task = diff.groupby(level="task")
    mean = by_task.mean()
    t = mean.abs().idxmax()
    parts = [f"{task} {m:+.1f}" + (f" ± {by_task.get_group(task).std():.1f} (n={len(by_task.get_group(task))} seeds)"
                                   if len(by_task.get_group(task)) > 1 else "") for task, m in mean.items()]
    ours = f"largest |Δ| {abs(mean[t]):.1f} pts ({t}); Δ (4-bit − 8-bit, pts): " + ", ".join(parts)
    ok = bool((mean.abs() <= CLOSE_POINTS).all())
    why = (f"every task's mean difference is within {CLOSE_POINTS:g} points" if ok else
           f"{int((mean.abs() > CLOSE_POINTS).sum())} of {len(mean)} tasks differ by more than {CLOSE_POINTS:g} points")
    return _claim(claim, paper_fig, ours, "holds" if ok else "does not hold", why, link)


def _peaks(runs: Sequence[dict], labels: Sequence[str]) -> dict[tuple, list[int]]:
    """{(model, tasks, what the peak measures, machine): [peak_mem_bytes, ...]} of single-process finetuned runs
    with one of the labels: a ratio is only taken between peaks of one definition measured on one machine."""
    out: dict[tuple, list[int]] = {}
    for r in runs:
        cfg = r["run_info"]["config"]
        if is_trained(r) and config_label(r) in labels and cfg.get("parallel", "none") == "none" \
                and r["train_info"].get("peak_mem_bytes"):
            hw = (r.get("meta_info") or {}).get("hardware") or {}
            key = (cfg.get("model"), tuple(cfg.get("tasks") or ()), peak_measures(r), str(hw.get("gpus") or machine(r)))
            out.setdefault(key, []).append(r["train_info"]["peak_mem_bytes"])
    return out


def _claim_4bit_memory(runs: Sequence[dict], link) -> dict:
    from .memory import PAPER_MEMORY

    claim = "4-bit cuts training memory to about 0.27x of 16-bit"
    p16 = next(m["paper_gb"] for m in PAPER_MEMORY if m["bits"] == 16)
    p4 = next(m["paper_gb"] for m in PAPER_MEMORY if m["bits"] == 4)
    paper_fig = f"{p4} / {p16} GB = {p4 / p16:.2f}x (Llama-3.1-8B, 4 GPUs, batch 4)"
    four, sixteen, eight = _peaks(runs, ["4-bit r4"]), _peaks(runs, SIXTEEN_BIT), _peaks(runs, ["8-bit r8"])
    ratios = [sum(four[k]) / len(four[k]) / (sum(sixteen[k]) / len(sixteen[k])) for k in four if k in sixteen]
    if not ratios and four and sixteen:
        return _claim(claim, paper_fig, "no like-for-like pair", "not measurable here",
                      "the 4-bit and 16-bit peaks in these results were measured on different machines or under "
                      "different definitions (whole process vs training phase, heap kept or not); rerun both "
                      "configurations in one grid", link)
    if not ratios:
        r8 = [sum(four[k]) / len(four[k]) / (sum(eight[k]) / len(eight[k])) for k in four if k in eight]
        partial = (f"; 4-bit r4 / 8-bit r8 measured here: ratio {_mean_std(r8)} over {len(r8)} task(s)") if r8 else ""
        return _claim(claim, paper_fig, "no 16-bit run" + partial, "not measurable here",
                      "evidence missing: no unquantized (precision auto) adapter in these results; add the auto "
                      "configuration to the grid", link)
    ratio = sum(ratios) / len(ratios)
    ours = f"ratio {_mean_std(ratios)} (measured peak, 4-bit r4 / 16-bit r8, {len(ratios)} task(s))"
    if ratio <= MEMORY_CUT_HOLDS:
        return _claim(claim, paper_fig, ours, "holds", f"4-bit needs at most {MEMORY_CUT_HOLDS:g}x of 16-bit", link)
    return _claim(claim, paper_fig, ours, "does not hold",
                  "not at this model size: weights are a small part of the measured peak (activations, framework; "
                  "on CPU the whole process); the planner in 02_lora_setup shows the 8B ratio", link)


def _twins(runs: Sequence[dict], mode: str) -> list[tuple[dict, dict]]:
    """(parallel run, its single-process twin: same config but parallel/nproc/variant_tag)."""
    def key(r):
        cfg = dict(r["run_info"]["config"])
        for k in ("parallel", "nproc", "variant_tag", "output_dir", "save_every", "log_every"):
            cfg.pop(k, None)
        return json.dumps(cfg, sort_keys=True, default=str)

    trained = [r for r in runs if is_trained(r)]
    single = {key(r): r for r in trained if r["run_info"]["config"].get("parallel", "none") == "none"}
    return [(r, single[key(r)]) for r in trained
            if r["run_info"]["config"].get("parallel") == mode and key(r) in single]


def _claim_ddp(runs: Sequence[dict], link) -> dict:
    claim = "Data parallelism speeds training"
    paper_fig = "DDP on 4 GPUs (the paper gives no speedup figure)"
    pairs = _twins(runs, "ddp")
    if not pairs:
        return _claim(claim, paper_fig, "no DDP run with a single-process twin", "not measurable here",
                      "evidence missing: run 04_parallel (MODES none,ddp) into these results", link)
    sp = [(r["train_info"]["tokens_per_s"] / s["train_info"]["tokens_per_s"],
           (r["train_info"].get("parallel") or {}).get("world_size") or r["run_info"]["config"].get("nproc"))
          for r, s in pairs]
    ours = "; ".join(f"x{w} ranks: {x:.2f}x tokens/s (efficiency {x / w:.2f})" for x, w in sp)
    ok = all(x > 1 for x, _ in sp)
    return _claim(claim, paper_fig, ours, "holds" if ok else "does not hold",
                  "tokens/s of the DDP run over its single-process twin (same global batches)" +
                  ("" if ok else ": no speedup on this machine (ranks share the cores)"), link)


def _claim_pipeline(runs: Sequence[dict], link) -> dict:
    claim = "Pipeline parallelism fits a model one device cannot hold"
    paper_fig = "layers split over 4 GPUs (no figure)"
    pairs = _twins(runs, "pipeline")
    if not pairs:
        return _claim(claim, paper_fig, "no pipeline run with a single-process twin", "not measurable here",
                      "evidence missing: run 04_parallel (MODES none,pipeline) into these results", link)
    parts, ok = [], True
    for r, s in pairs:
        ranks = (r["train_info"].get("parallel") or {}).get("ranks") or []
        stage = max((x.get("peak_mem_bytes") or 0) for x in ranks) if ranks else r["train_info"]["peak_mem_bytes"]
        frac = stage / s["train_info"]["peak_mem_bytes"]
        ok &= frac < 1
        parts.append(f"{len(ranks) or '?'} stages: largest stage peak {frac:.2f}x of the single-process peak")
    return _claim(claim, paper_fig, "; ".join(parts), "holds" if ok else "does not hold",
                  "each stage holds less than the whole run, the condition for fitting a model no single device "
                  "holds; a model too large for one device was not tried here" if ok else
                  "a stage needs as much as the whole run (per-process framework memory dominates at this size)",
                  link)


def _claim_adapter_size(runs: Sequence[dict], link) -> dict:
    from .config import LoraSettings
    from .lora import adapter_bytes

    claim = "LoRA adapters are small (MB)"
    try:
        mb8 = adapter_bytes(PAPER_MODEL, LoraSettings(rank=8, alpha=16.0)) / 1e6
        mb4 = adapter_bytes(PAPER_MODEL, LoraSettings(rank=4, alpha=16.0)) / 1e6
        paper_fig = f"Llama-3.1-8B q/k/v: r8 {mb8:.1f} MB, r4 {mb4:.1f} MB (fp32, the kit's count)"
    except Exception:  # noqa: BLE001 - a config the counter lacks shows as missing, not as a crash
        paper_fig = "MB-sized adapters (no figure)"
    sizes = [(r["train_info"]["adapter_bytes"] / 1e6, config_label(r)) for r in runs
             if is_trained(r) and r["train_info"].get("adapter_bytes")]
    if not sizes:
        return _claim(claim, paper_fig, "no finetuned run", "not measurable here",
                      "evidence missing: no results file with train_info.adapter_bytes", link)
    lo, hi = min(sizes), max(sizes)
    ours = f"{len(sizes)} adapters, {lo[0]:.2f} MB ({lo[1]}) .. {hi[0]:.2f} MB ({hi[1]})"
    ok = hi[0] < SMALL_ADAPTER_MB
    return _claim(claim, paper_fig, ours, "holds" if ok else "does not hold",
                  f"every adapter is under {SMALL_ADAPTER_MB:g} MB (adapter_model.safetensors)" if ok else
                  f"an adapter of {hi[0]:.0f} MB", link)


# The figure behind each claim, as links from the rendered notebook pages (reports/html/ beside reports/figures/).
STUDY_CLAIM_LINKS = {"finetuned_beats_base": "../figures/06_accuracy_vs_memory.png",
                     "4bit_close_to_8bit": "../figures/06_accuracy_vs_memory.png",
                     "4bit_memory": "../figures/06_memory_breakdown.png",
                     "ddp_speed": "../figures/04_rank_time_memory.png",
                     "pipeline_fits": "../figures/04_rank_time_memory.png"}
CLAIM_KEYS = ("finetuned_beats_base", "4bit_close_to_8bit", "4bit_memory", "ddp_speed", "pipeline_fits",
              "adapter_size")


def claims(runs: Sequence[dict], paper: dict | None = None, links: dict | None = None) -> pd.DataFrame:
    """One row per claim of the paper: claim, the paper's figure, ours (measured; mean ± std and n where seeds
    exist), verdict (holds / does not hold / not measurable here), why, and the figure behind it (links: claim
    key -> href, see CLAIM_KEYS). Computed from the results only; a claim without evidence says so."""
    paper = paper or paper_results()
    links = links or {}
    sc = seeded_scores(runs)
    rows = [_claim_finetuned_beats_base(sc, paper, links.get("finetuned_beats_base")),
            _claim_4bit_close_to_8bit(sc, paper, links.get("4bit_close_to_8bit")),
            _claim_4bit_memory(runs, links.get("4bit_memory")),
            _claim_ddp(runs, links.get("ddp_speed")),
            _claim_pipeline(runs, links.get("pipeline_fits")),
            _claim_adapter_size(runs, links.get("adapter_size"))]
    return pd.DataFrame(rows, index=pd.Index(CLAIM_KEYS, name="key"))


def claims_html(table: pd.DataFrame) -> str:
    """The claims table as HTML, the figure column as links."""
    import html

    head = "".join(f"<th>{h}</th>" for h in ("claim", "paper", "ours", "verdict", "why", "figure"))
    body = []
    for r in table.itertuples():
        fig = f'<a href="{html.escape(r.figure)}">figure</a>' if isinstance(r.figure, str) and r.figure else "—"
        colour = {"holds": "#dfd", "does not hold": "#fdd"}.get(r.verdict, "#eee")
        body.append(f"<tr><td>{html.escape(r.claim)}</td><td>{html.escape(r.paper)}</td><td>{html.escape(r.ours)}</td>"
                    f'<td style="background:{colour}"><b>{html.escape(r.verdict)}</b></td>'
                    f"<td>{html.escape(r.why)}</td><td>{fig}</td></tr>")
    return f'<table class="claims"><tr>{head}</tr>{"".join(body)}</table>'


def claims_markdown(table: pd.DataFrame) -> str:
    rows = [f"| {r.claim} | {r.paper} | {r.ours} | **{r.verdict}** | {r.why} | "
            f"{f'[figure]({r.figure})' if isinstance(r.figure, str) and r.figure else '—'} |" for r in table.itertuples()]
    return "| claim | paper | ours | verdict | why | figure |\n|---|---|---|---|---|---|\n" + "\n".join(rows)


# ------------------------------------------------------------------ the paper side by side, settings on the page

def _fmt(values, scale: float = 1.0, digits: int = 3) -> str:
    v = pd.Series([x for x in values if x is not None and pd.notna(x)], dtype=float) * scale
    if v.empty:
        return "—"
    return f"{v.mean():.{digits}f}" + (f" ± {v.std():.{digits}f} (n={len(v)})" if len(v) > 1 else "")


def paper_side_by_side(runs: Sequence[dict], paper: dict | None = None) -> pd.DataFrame:
    """Per task of the paper evaluated here and configuration: the paper's accuracy (%) and F1 beside ours
    (mean ± std over seeds), our scikit-learn weighted F1 and FinLoRA's F1 rule (f1_weighted_finlora, the only
    one the paper's F1 compares with), the protocol ours ran in, the majority baseline and test n. Where the
    generate protocol also ran, its accuracy and FinLoRA-rule F1 are shown beside (the paper's protocol)."""
    paper = paper or paper_results()
    ev = eval_table_seeded(runs)
    if ev.empty:
        return pd.DataFrame()
    ev = ev[ev["own_task"]]
    ev = ev.drop_duplicates(subset=["task", "config", "mode", "seed", "n", "model"])
    rows = []
    for task, by_cfg in paper["results"].items():
        mine_t = ev[ev["task"] == task]
        if mine_t.empty:
            continue
        for cfg in paper["configurations"]:
            p = by_cfg.get(cfg) or {}
            label = cfg if (mine_t["config"] == cfg).any() else STANDS_IN_FOR.get(cfg, cfg)
            mine = mine_t[mine_t["config"] == label]
            prim, gen = mine[mine["primary"]], mine[mine["mode"] == "generate"]
            rows.append({
                "task": task, "config": cfg, "ours config": label if len(mine) else "—",
                "paper accuracy %": p.get("accuracy"), "ours accuracy %": _fmt(prim["accuracy"], 100, 1),
                "paper F1": p.get("f1_weighted"), "ours F1 (FinLoRA rule)": _fmt(prim["f1_weighted_finlora"]),
                "ours F1 (sklearn weighted)": _fmt(prim["f1_weighted"]),
                "ours protocol": ", ".join(sorted({f"{m} on {q}" for m, q in zip(prim["mode"], prim["eval_precision"])}))
                                 or "—",
                "generate: accuracy % / F1 (FinLoRA rule)": (f"{_fmt(gen['accuracy'], 100, 1)} / "
                                                             f"{_fmt(gen['f1_weighted_finlora'])}") if len(gen) else "—",
                "majority %": _fmt(mine_t["majority_baseline"].head(1), 100, 1),
                "test n": ", ".join(str(int(n)) for n in sorted(set(mine_t["n"].dropna()))),
            })
    return pd.DataFrame(rows)


def setting_differences(runs: Sequence[dict], paper: dict | None = None) -> pd.DataFrame:
    """What differs between the paper's numbers and ours: model size, train examples, epochs, evaluation
    protocol and precision, test n - the paper's side from paper_results.json, ours from the results."""
    from .results import model_slug

    paper = paper or paper_results()
    st = paper.get("setting") or {}
    trained = [r for r in runs if is_trained(r)]
    ev = eval_table(runs)

    def distinct(values) -> str:
        c = Counter(v for v in values if v is not None)
        return ", ".join(f"{v}" + (f" ({n} runs)" if len(c) > 1 else "") for v, n in c.most_common()) or "—"

    examples = distinct(n for r in trained for n in (r["train_info"].get("examples_per_task") or {}).values())
    prim = ev[ev["primary"]] if not ev.empty else ev
    protocol = distinct(f"{m} on {p}" for m, p in zip(prim.get("mode", []), prim.get("eval_precision", [])))
    shared = prim[prim["task"].isin(list(paper.get("results", {})))] if len(prim) else prim
    test_n = ", ".join(f"{t} {int(n)}" for t, n in shared.groupby("task")["n"].max().items()) if len(shared) else "—"
    paper_n = ", ".join(f"{t} {n}" for t, n in (st.get("test_n") or {}).items() if n)
    params = st.get("params")
    rows = [
        ("model", f"{st.get('model', '?')}" + (f" ({params / 1e9:.2f}B parameters)" if params else ""),
         distinct(model_slug(r["run_info"]["config"].get("model", "?")) for r in runs)),
        ("train examples per task", st.get("train_examples", "—"), f"{examples} (per adapter and task)"),
        ("epochs", str(st.get("epochs", "—")),
         distinct(r["run_info"]["config"].get("epochs") if not r["run_info"]["config"].get("max_steps")
                  else f"{r['run_info']['config']['max_steps']} steps" for r in trained)),
        ("learning rate", str(st.get("lr", "—")), distinct(r["run_info"]["config"].get("lr") for r in trained)),
        ("evaluation protocol and precision", f"{st.get('eval_protocol', '?')} on {st.get('eval_precision', '?')}: "
         f"{st.get('eval_rule', '')}", protocol),
        ("test n", paper_n or "—", test_n),
    ]
    return pd.DataFrame(rows, columns=["setting", "paper", "here"])


def paper_sections_html(runs: Sequence[dict], links: dict | None = None, paper: dict | None = None) -> str:
    """The report's paper check as HTML, for every rendered report: the claims table, the paper's numbers
    side by side with ours (both F1s), and what differs between the two settings."""
    import html

    paper = paper or paper_results()
    side = paper_side_by_side(runs, paper)
    cites = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v['citation'])}</li>"
                    for k, v in paper["sources"].items())
    return f"""<h2 id="claims">The paper's claims</h2>
<p>One row per claim of FinLoRA: the paper's figure, ours (measured from the results files below; mean ± std and
n where several seeds ran), and the verdict. <i>Not measurable here</i> names the evidence that is missing.</p>
{claims_html(claims(runs, paper, links))}
<h2 id="paper">The paper side by side</h2>
<p>FinLoRA's accuracy (%) and weighted F1 for Llama-3.1-8B-Instruct beside ours. The paper's F1 follows FinLoRA's
rule (each wrong answer replaced by the raw output before scikit-learn's weighted F1, which puts it above
accuracy): compare it only with <i>ours F1 (FinLoRA rule)</i>. With label scoring every answer is a label, so that
rule equals the scikit-learn F1; it differs only for generated answers. <i>—</i>: not run here, or no
verified paper value.</p>
{side.to_html(escape=True, index=False, na_rep="—") if not side.empty else "<p>No task of the paper was evaluated.</p>"}
<p>What differs between the paper's numbers and ours:</p>
{setting_differences(runs, paper).to_html(escape=True, index=False)}
<p>Sources:</p><ul>{cites}</ul>
"""
# ------------------------------------------------------------------ bits x rank: two factors, separated

_BITS_RANK = re.compile(r"^(\d+)-bit r(\d+)$")


def bits_rank_rows(rows: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The plain '<bits>-bit r<rank>' adapters of per-seed rows (columns task, config, seed, <metric>), with
    integer `bits` and `rank` columns; variants, multi-task adapters and the base are left out."""
    if rows.empty or not {"task", "config", "seed", metric} <= set(rows.columns):
        return pd.DataFrame(columns=["task", "config", "seed", "bits", "rank", metric])
    parsed = rows["config"].astype(str).str.extract(_BITS_RANK)
    keep = parsed[0].notna()
    out = rows.loc[keep, ["task", "config", "seed", metric]].copy()
    out["bits"] = parsed.loc[keep, 0].astype(int)
    out["rank"] = parsed.loc[keep, 1].astype(int)
    return out.reset_index(drop=True)


def bits_rank_table(rows: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Two-factor table: one row per (task, bits), highest precision first; one column per rank; cells
    'mean ± std (n)' over seeds (sample std; no ± with a single seed)."""
    br = bits_rank_rows(rows, metric)
    if br.empty:
        return pd.DataFrame()
    g = br.groupby(["task", "bits", "rank"])[metric].agg(["mean", "std", "size"]).reset_index()
    g["cell"] = [f"{m:.3f}" + (f" ± {s:.3f}" if n > 1 and pd.notna(s) else "") + f" ({n})"
                 for m, s, n in zip(g["mean"], g["std"], g["size"])]
    table = g.pivot(index=["task", "bits"], columns="rank", values="cell").fillna("")
    table = table.sort_index(level=["task", "bits"], ascending=[True, False])
    table.columns = [f"r{r}" for r in table.columns]
    table.index = table.index.set_names(["task", "bits"])
    return table


def bits_rank_decomposition(rows: pd.DataFrame, task: str, metric: str = "accuracy",
                            start: tuple[int, int] = (8, 8), end: tuple[int, int] = (4, 4)) -> dict | None:
    """Split the change from `start` (bits, rank) to `end` into a rank part and a bits part.

    Per seed (the configurations of one seed share the training sample, order and test sample, so the
    differences are paired): total = m(end) - m(start); rank = the rank change measured at both bit widths
    and averaged, bits likewise at both ranks (the two-factor Shapley split: rank + bits == total exactly);
    interaction = how much the rank effect differs between the two bit widths. Returns means and sample
    stds over the seeds that ran all four cells, or None when some cell is missing.
    """
    (b0, r0), (b1, r1) = start, end
    br = bits_rank_rows(rows, metric)
    br = br[br["task"] == task]
    if br.empty:
        return None
    wide = br.pivot_table(index="seed", columns=["bits", "rank"], values=metric, aggfunc="mean")
    cells = [(b0, r0), (b0, r1), (b1, r0), (b1, r1)]
    if any(c not in wide.columns for c in cells):
        return None
    wide = wide[cells].dropna()
    if wide.empty:
        return None
    m = {c: wide[c] for c in cells}
    parts = {
        "total": m[(b1, r1)] - m[(b0, r0)],
        "rank": ((m[(b0, r1)] - m[(b0, r0)]) + (m[(b1, r1)] - m[(b1, r0)])) / 2,
        "bits": ((m[(b1, r0)] - m[(b0, r0)]) + (m[(b1, r1)] - m[(b0, r1)])) / 2,
        "interaction": (m[(b1, r1)] - m[(b1, r0)]) - (m[(b0, r1)] - m[(b0, r0)]),
    }
    out = {"task": task, "metric": metric, "start": f"{b0}-bit r{r0}", "end": f"{b1}-bit r{r1}",
           "seeds": [int(s) if isinstance(s, (int, float)) else s for s in wide.index], "n_seeds": len(wide)}
    for k, v in parts.items():
        out[k] = float(v.mean())
        out[f"{k}_std"] = float(v.std()) if len(v) > 1 else float("nan")
    return out


def bits_rank_sentence(d: dict | None) -> str:
    """One sentence from bits_rank_decomposition: how much of the change is rank, how much bits, and
    whether each part stands out of the seed-to-seed spread (|mean| > its std over seeds)."""
    if d is None:
        return "Bits x rank: not every cell of the two-factor table ran, so the change is not decomposed."

    def pm(k):
        s = d[f"{k}_std"]
        return f"{d[k]:+.3f}" + ("" if s != s else f" ± {s:.3f}")

    def verdict(k):
        s = d[f"{k}_std"]
        if s != s:
            return "one seed: no spread to compare with"
        return "beyond the seed spread" if abs(d[k]) > s else "within the seed spread"

    share = (f"{abs(d['rank']) / (abs(d['rank']) + abs(d['bits'])):.0%} of it rank"
             if abs(d["rank"]) + abs(d["bits"]) > 0 else "no part of it rank or bits")
    return (f"{d['task']}, {d['start']} → {d['end']}: {d['metric']} changes by {pm('total')} (mean ± std of the "
            f"per-seed difference, {d['n_seeds']} seed{'s' if d['n_seeds'] != 1 else ''}); the rank change accounts "
            f"for {pm('rank')} ({verdict('rank')}) and the bits change for {pm('bits')} ({verdict('bits')}), "
            f"{share} by magnitude; interaction {pm('interaction')}.")


# ------------------------------------------------------------------ memory at scale (bench/memory_at_scale.py)

def memory_at_scale_table(doc: dict) -> pd.DataFrame:
    """The memory_at_scale bench's rows as a table in GiB: measured training-phase peak above the process
    baseline beside the planner's prediction (and the error), the weights, the training phase above the loaded
    model, the whole-process peak and the step time. `doc`: the bench's results JSON (read_result)."""
    path = doc.get("_path", doc.get("run_id", "<memory_at_scale>"))
    rows = get_field(doc, "rows", path)
    need = ("model", "label", "weight_bytes", "above_process_bytes", "above_loaded_bytes", "process_peak_bytes",
            "predicted_bytes", "step_s")
    out = []
    for i, r in enumerate(rows):
        for f in need:
            get_field(r, f, f"{path} rows[{i}]")
        out.append(dict(model=r["model"], config=r["label"], precision=r.get("precision"),
                        weights_gib=r["weight_bytes"] / 2 ** 30, planner_weights_gib=r.get("predicted_weight_bytes", 0) / 2 ** 30,
                        measured_gib=r["above_process_bytes"] / 2 ** 30, planner_gib=r["predicted_bytes"] / 2 ** 30,
                        error_pct=100 * (r["predicted_bytes"] - r["above_process_bytes"]) / r["above_process_bytes"],
                        above_loaded_gib=r["above_loaded_bytes"] / 2 ** 30, process_peak_gib=r["process_peak_bytes"] / 2 ** 30,
                        step_s=r["step_s"]))
    return pd.DataFrame(out)


def memory_at_scale_ratio(table: pd.DataFrame, model: str, column: str = "measured_gib") -> float | None:
    """4-bit over 16-bit of one column for one model (None when either row is missing)."""
    d = table[table["model"] == model].set_index("config")[column]
    return float(d["4-bit"] / d["16-bit"]) if {"4-bit", "16-bit"} <= set(d.index) else None


