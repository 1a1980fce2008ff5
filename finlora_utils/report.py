"""The final report, built only from reports/results/*.json (no model is loaded).

    runs = report.load("reports/results")
    report.paper_layout(runs, "accuracy")     # rows tasks, columns base / 16-bit r8 / 8-bit r8 / 4-bit r4
    report.efficiency_table(runs)             # peak memory, train time, adapter size, s/example, paper-scale cost
    report.header(runs)                       # what ran: model, data, preset, hardware, versions, commit

Every table is a pandas DataFrame; figure builders take those frames and return matplotlib figures
(notebooks save them with plots.save_figure, PNG + CSV). A results file that lacks a field a table
needs raises ResultsError naming the file and the field.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

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


def require(runs: Sequence[dict], fields: Iterable[str]) -> None:
    """Every run has every dotted field (e.g. 'train_info.peak_mem_bytes'), else ResultsError(file, field)."""
    for r in runs:
        for f in fields:
            get_field(r, f, r.get("_path", r.get("run_id", "<results>")))


def is_trained(run: dict) -> bool:
    return bool(run.get("train_info"))


def config_label(run: dict) -> str:
    """'base' for zero-shot results, else '<bits>-bit r<rank>[ <variant>][ multi-task][ <tag>]' from run_info.config."""
    from .config import PRECISION_BITS

    if not is_trained(run):
        return "base"
    path = run.get("_path", run.get("run_id"))
    cfg = get_field(run, "run_info.config", path)
    prec = get_field(run, "run_info.config.precision", path)
    rank = get_field(run, "run_info.config.lora.rank", path)
    label = f"{PRECISION_BITS.get(prec, prec)}-bit r{rank}"
    variant = (cfg.get("lora") or {}).get("variant", "lora")
    if variant != "lora":
        label += f" {variant}"
    if len(cfg.get("tasks") or []) > 1:   # one adapter over a task mix must not average with single-task ones
        label += " multi-task"
    if cfg.get("variant_tag"):
        label += f" {cfg['variant_tag']}"
    return label


def _order(labels: Iterable[str]) -> list[str]:
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
    table = table[_order(table.columns)]
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
    bits = {"fp32": 16, "bf16": 16, "int8": 8, "nf4": 4, "fp4": 4}.get(cfg.get("precision"), 16)
    try:
        p = memory.plan(model=PAPER_SETTING["model"], bits=bits, rank=lo.get("rank"), targets=tuple(lo.get("targets") or
                        ("q_proj", "k_proj", "v_proj")), seq_len=cfg.get("max_seq_len", 512),
                        batch=cfg.get("batch_size", 8), grad_checkpointing=cfg.get("grad_checkpointing") == "on",
                        label_only_logits=bool(cfg.get("label_only_logits")), gpus=PAPER_SETTING["gpus"],
                        parallel=PAPER_SETTING["parallel"], variant=lo.get("variant", "lora"))
    except Exception:  # noqa: BLE001 - a config the planner cannot price shows as missing, not as a crash
        return None
    return p.total_gib


def efficiency_table(runs: Sequence[dict]) -> pd.DataFrame:
    """One row per finetuned run: measured memory/time/size, evaluation speed, and paper-scale estimates."""
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
            peak_mem_mib=ti["peak_mem_bytes"] / 2 ** 20, peak_mem_method=ti.get("peak_mem_method"),
            train_s=ti["wall_s"], steps=ti.get("steps"), tokens_per_s=ti.get("tokens_per_s"),
            adapter_kib=ti["adapter_bytes"] / 1024,
            eval_s_per_example=sum(e["s_per_example"] for e in evals) / len(evals) if evals else None,
            paper_peak_gib_per_gpu=paper_memory(r), paper_gpu_hours=cost["gpu_hours"], paper_cost_usd=cost["cost_usd"]))
    return pd.DataFrame(rows)


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
    """Planner components for each finetuned run's own config and device, with the measured peak beside them."""
    from . import memory

    rows = []
    for r in runs:
        if not is_trained(r):
            continue
        cfg, ti = r["run_info"]["config"], r["train_info"]
        lo = cfg.get("lora") or {}
        bits = {"fp32": 16, "bf16": 16, "int8": 8, "nf4": 4, "fp4": 4}.get(cfg.get("precision"), 16)
        device = "cuda" if (r.get("meta_info") or {}).get("hardware", {}).get("gpus") else "cpu"
        try:
            p = memory.plan(model=cfg.get("model"), bits=bits, rank=lo.get("rank"),
                            targets=tuple(lo.get("targets") or ("q_proj", "k_proj", "v_proj")),
                            seq_len=cfg.get("max_seq_len", 512), batch=cfg.get("batch_size", 8),
                            grad_checkpointing=cfg.get("grad_checkpointing") == "on",
                            label_only_logits=bool(cfg.get("label_only_logits")), device=device,
                            variant=lo.get("variant", "lora"))
            parts = p.breakdown
        except Exception:  # noqa: BLE001 - e.g. the tiny test model has no shipped config
            parts = {}
        for k, v in parts.items():
            rows.append(dict(run_id=r["run_id"], config=config_label(r), component=k, mib=v / 2 ** 20, kind="planned"))
        rows.append(dict(run_id=r["run_id"], config=config_label(r), component="measured peak",
                         mib=ti.get("peak_mem_bytes", 0) / 2 ** 20, kind="measured"))
    return pd.DataFrame(rows, columns=["run_id", "config", "component", "mib", "kind"])


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
        "hardware": distinct((h.get("gpu") or f"CPU: {h.get('cpu')} x{h.get('cpu_count')}") for h in hw),
        "versions": distinct(", ".join(f"{k} {p.get(k)}" for k in ("torch", "transformers", "peft", "bitsandbytes"))
                             for p in pk),
        "python": distinct(r["meta_info"].get("python") for r in runs),
        "base weights": distinct(base_weights(r) for r in runs),
        "commit": distinct(r["run_info"].get("git_commit") for r in runs),
        "created": f"{min(r['run_info'].get('created') or '' for r in runs)} .. "
                   f"{max(r['run_info'].get('created') or '' for r in runs)}",
    }


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


# ------------------------------------------------------------------ figures (frames in, figures out)

def fig_accuracy_vs_memory(df: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for task, g in df.groupby("task"):
        ax.scatter(g["peak_mem_mib"], g["accuracy"], label=task)
        # neighbours in memory alternate above / below their point, so close configurations stay legible
        for i, (_, row) in enumerate(g.sort_values("peak_mem_mib").iterrows()):
            ax.annotate(row["config"], (row["peak_mem_mib"], row["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 4 if i % 2 == 0 else -10))
    ax.set_xlabel("measured peak training memory (MiB)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs memory per configuration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_loss_curves(df: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (run, cfg), g in df.groupby(["run_id", "config"]):
        ax.plot(g["step"], g["loss"], label=f"{cfg} ({run})" if df["run_id"].nunique() > 4 else cfg)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title("loss curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_memory_breakdown(df: pd.DataFrame):
    """Stacked planner components per run, the measured peak as a black marker."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    planned = df[df["kind"] == "planned"].pivot_table(index="run_id", columns="component", values="mib", aggfunc="sum")
    config_of = df.drop_duplicates("run_id").set_index("run_id")["config"]
    rank = {c: i for i, c in enumerate(_order(config_of))}
    runs = sorted(config_of.index, key=lambda r: (rank[config_of[r]], r))
    measured = df[df["kind"] == "measured"].set_index("run_id")["mib"].reindex(runs)
    labels = config_of.reindex(runs)
    if not planned.empty:
        planned.reindex(runs).fillna(0).plot.bar(stacked=True, ax=ax, rot=0, width=0.6)
    ax.scatter(range(len(runs)), measured.values, color="black", marker="_", s=600, zorder=3, label="measured peak")
    ax.set_xticks(range(len(runs)), labels.values, rotation=0)
    ax.set_xlabel("")
    ax.set_ylabel("MiB")
    ax.set_title("training memory: planner components vs measured peak")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def confusion_frame(entry: dict) -> pd.DataFrame:
    """An eval_info entry's confusion matrix as a frame (rows gold, columns predicted)."""
    labels = entry["confusion_labels"]
    return pd.DataFrame(entry["confusion"], index=pd.Index(labels, name="gold"), columns=labels)


def fig_confusions(frames: dict[str, pd.DataFrame], title: str = ""):
    """One heat-map per (name -> confusion frame), side by side."""
    import matplotlib.pyplot as plt

    frames = {k: frames[k] for k in _order(frames)}  # base, 16-bit r8, 8-bit r8, 4-bit r4, others
    n = len(frames)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.2), squeeze=False)
    for ax, (name, cm) in zip(axes[0], frames.items()):
        ax.imshow(cm.values, cmap="Blues")
        ax.set_xticks(range(cm.shape[1]), [c[:10] for c in cm.columns], rotation=60, fontsize=7)
        ax.set_yticks(range(cm.shape[0]), [c[:10] for c in cm.index], fontsize=7)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, int(cm.values[i, j]), ha="center", va="center", fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
    axes[0][0].set_ylabel("gold", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


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


def fig_memory_at_scale(table: pd.DataFrame, paper_gb: dict | None = None):
    """Measured vs planner per model and configuration (grouped bars, GiB), titled with each model's measured
    4-bit / 16-bit ratio beside the paper's (FinLoRA's Llama-3.1-8B GPU numbers)."""
    import matplotlib.pyplot as plt

    models_ = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, len(models_), figsize=(5 * len(models_), 3.8), squeeze=False)
    paper = ""
    if paper_gb and {"4-bit", "16-bit"} <= set(paper_gb):
        paper = (f"; paper (Llama-3.1-8B, GPU): {paper_gb['4-bit']:.2f} / {paper_gb['16-bit']:.2f} GB = "
                 f"{paper_gb['4-bit'] / paper_gb['16-bit']:.2f}")
    for ax, m in zip(axes[0], models_):
        d = table[table["model"] == m]
        x = range(len(d))
        ax.bar([i - 0.2 for i in x], d["measured_gib"], 0.4, label="measured (peak above process baseline)")
        ax.bar([i + 0.2 for i in x], d["planner_gib"], 0.4, label="planner")
        ax.scatter(list(x), d["weights_gib"], color="k", marker="_", s=300, zorder=3, label="weights (measured)")
        ax.set_xticks(list(x), d["config"])
        r = memory_at_scale_ratio(table, m)
        ax.set_title(f"{m}: 4-bit / 16-bit = {r:.2f}" if r is not None else m, fontsize=10)
        ax.set_ylabel("GiB")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Training memory at scale, measured vs planner (random weights, CPU){paper}", fontsize=10)
    fig.tight_layout()
    return fig
