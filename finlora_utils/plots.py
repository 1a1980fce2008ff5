"""Figures from results: every figure is saved as PNG with a CSV of the plotted numbers beside it."""
from __future__ import annotations

from pathlib import Path
from textwrap import fill

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .report import HEAP_KEPT, WHOLE_PROCESS, config_order, memory_at_scale_ratio
from .results import atomic_write_text


def save_figure(fig, data: pd.DataFrame, stem: str, figures_dir: str | Path = "reports/figures") -> tuple[Path, Path]:
    """Save `fig` as <stem>.png and `data` as <stem>.csv (same stem), both atomically."""
    if data is None or len(data) == 0:
        raise ValueError(f"save_figure({stem!r}): the plotted data is empty; a figure needs its numbers beside it")
    d = Path(figures_dir)
    d.mkdir(parents=True, exist_ok=True)
    png, csv = d / f"{stem}.png", d / f"{stem}.csv"
    tmp = d / f".{stem}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(png)
    atomic_write_text(csv, data.to_csv(index=False))
    return png, csv


def wrapped(title: str, width: int) -> str:
    """A title's lines wrapped to `width` characters (a figure note naming machines and base weights is long)."""
    return "\n".join(fill(line, width) for line in title.split("\n"))


def bar(data: pd.DataFrame, x: str, y: str, title: str, ylabel: str | None = None, hue: str | None = None):
    """A plain (grouped) bar chart; returns the figure."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if hue:
        piv = data.pivot_table(index=x, columns=hue, values=y, aggfunc="first")
        piv.plot.bar(ax=ax, rot=0)
    else:
        ax.bar(data[x].astype(str), data[y])
    ax.set_title(wrapped(title, 90), fontsize=10 if "\n" in title else None)
    ax.set_ylabel(ylabel or y)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def label_shares(labels: pd.DataFrame, title: str = "Label distribution per task and split"):
    """Stacked horizontal bars of label shares, one bar per task/split."""
    piv = labels.assign(name=labels["task"] + " / " + labels["split"]).pivot_table(
        index="name", columns="label", values="share", aggfunc="first", sort=False).fillna(0)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(piv) + 1.5))
    piv.plot.barh(stacked=True, ax=ax, width=0.8)
    ax.set_xlabel("share of examples")
    ax.set_title(title)
    ax.invert_yaxis()
    ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def length_boxes(token_counts: pd.DataFrame, thresholds=(512, 1024, 2048, 4096),
                 title: str = "Prompt + answer length (tokens)"):
    """Box plot of token lengths per task/split on a log axis, with the usual context limits marked."""
    names = list(dict.fromkeys(token_counts["task"] + " / " + token_counts["split"]))
    groups = [token_counts.loc[(token_counts["task"] + " / " + token_counts["split"]) == n, "tokens"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    ax.boxplot(groups, vert=False, tick_labels=names, showfliers=True, flierprops=dict(markersize=2))
    ax.set_xscale("log")
    for t in thresholds:
        ax.axvline(t, color="grey", ls="--", lw=0.8)
        ax.text(t, 1.0, str(t), ha="center", va="bottom", fontsize=7, color="grey", transform=ax.get_xaxis_transform())
    ax.invert_yaxis()
    ax.set_xlabel("tokens (log scale)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ 01: quantization

def storage_bits(storage: pd.DataFrame, title: str):
    """quant.storage_table as bars: measured bits per projection weight and per model parameter, the format's
    theory as a black tick on the projection bar (so a gap between measurement and definition shows)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = np.arange(len(storage))
    ax.bar(x - 0.2, storage["proj_bits_per_param"], 0.4, label="projections (measured)")
    ax.bar(x + 0.2, storage["model_bits_per_param"], 0.4, label="whole model (measured)")
    ax.scatter(x - 0.2, storage["theory_bits_per_param"], color="k", marker="_", s=500, label="theory", zorder=3)
    ax.set_xticks(x, storage["scheme"])
    ax.set_ylabel("bits per parameter")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def layer_errors(errs: pd.DataFrame, title: str):
    """quant.layer_errors: left the mean relative Frobenius error per projection type and format (log axis),
    right the cosine(W, Q(W)) of every analysed projection per format."""
    rel = errs.pivot_table(index="module", columns="scheme", values="rel_fro", aggfunc="mean")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    rel.plot.bar(ax=axes[0], rot=30, logy=True)
    axes[0].set_ylabel("relative Frobenius error")
    axes[0].legend(fontsize=7, ncol=len(rel.columns), loc="upper center", bbox_to_anchor=(0.5, 1.15))
    errs.boxplot(column="cosine", by="scheme", ax=axes[1])
    axes[1].set_title("cosine(W, Q(W)) per projection")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def error_distribution(hist: pd.DataFrame, title: str):
    """quant.error_histogram: one step line per format on a log density axis (the tails are the point)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for s in [c for c in hist.columns if c != "bin_center"]:
        ax.step(hist["bin_center"], hist[s], where="mid", label=s)
    ax.set_yscale("log")
    ax.set_xlabel("(Q(w) - w) / rms(w)")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title(title)
    return fig


def source_vs_continuous(summary: pd.DataFrame, title: str, source_label: str):
    """quant.source_effect_summary: per format the mean error on the weights as loaded beside the error on the
    continuous reference; source_label names the first bars (e.g. "on embedded's weights (source)")."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = np.arange(len(summary))
    ax.bar(x - 0.2, summary["rel_fro_source"], 0.4, label=source_label)
    ax.bar(x + 0.2, summary["rel_fro_continuous"], 0.4, label="on the continuous reference")
    ax.set_xticks(x, summary["scheme"])
    ax.set_yscale("log")
    ax.set_ylabel("relative Frobenius error")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def zero_shot(zero: pd.DataFrame, title: str):
    """report.zero_shot_table: accuracy per task and precision with ±1 standard error, and each task's
    majority baseline as a dashed line across its group (a model that always answers one label sits on it)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    piv = zero.pivot_table(index="task", columns="precision", values="accuracy")
    err = zero.pivot_table(index="task", columns="precision", values="stderr")
    piv.plot.bar(ax=ax, rot=0, yerr=err, capsize=3)
    # pivot_table sorts tasks; groupby sorts them the same way, so line i sits over bar group i
    for i, (_, m) in enumerate(zero.groupby("task")["majority"].first().items()):
        ax.hlines(m, i - 0.4, i + 0.4, colors="k", linestyles="dashed", label="majority" if i == 0 else None)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


# ------------------------------------------------------------------ 02: LoRA setup and memory

def planner_breakdown(breakdown: pd.DataFrame, title: str):
    """memory.breakdown_table: one stacked bar per configuration, one segment per planner component (GiB)."""
    parts = [c for c in breakdown.columns if c not in ("config", "total_GiB")]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    breakdown.set_index("config")[parts].plot.bar(stacked=True, ax=ax, rot=20)
    ax.set_ylabel("GiB per GPU")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return fig


def paper_memory(paper: pd.DataFrame, title: str):
    """memory.paper_comparison_table: the paper's reported GB (black) beside each planner scenario's
    prediction, one group per (bits, batch) point."""
    scenarios = list(dict.fromkeys(paper["scenario"]))
    points = paper[paper["scenario"] == scenarios[0]]
    n, w = len(points), 0.27
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    for i, sc in enumerate(scenarios):
        g = paper[paper["scenario"] == sc]
        ax.bar([j + w * (i + 1) for j in range(len(g))], g["predicted"], w, label=f"planner: {sc}")
    ax.bar(range(n), points["paper_gb"], w, label="FinLoRA reported", color="k")
    ax.set_xticks([j + w for j in range(n)], points["bits"].astype(str) + "-bit b" + points["batch"].astype(str))
    ax.set_ylabel("GB")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def planner_accuracy(acc: pd.DataFrame, title: str):
    """bench/planner_accuracy.py's rows: predicted vs measured peak (MiB) per model, the diagonal and a ±10 %
    band around it, so a point outside the band is a planner miss worth reading."""
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for m, g in acc.groupby("model"):
        ax.scatter(g["measured_bytes"] / 2**20, g["predicted_bytes"] / 2**20, label=m)
    hi = max(acc["measured_bytes"].max(), acc["predicted_bytes"].max()) / 2**20 * 1.1
    ax.plot([0, hi], [0, hi], "k-", lw=0.8)
    ax.fill_between([0, hi], [0, 0.9 * hi], [0, 1.1 * hi], color="grey", alpha=0.2, label="±10 %")
    ax.set_xlabel("measured peak (MiB)")
    ax.set_ylabel("predicted (MiB)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


# ------------------------------------------------------------------ report figures (report's frames in)

def _finish(fig, ax, xlabel: str, ylabel: str, title: str, legend_size: int):
    """The report figures' common frame: axis labels, title, a light grid, the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    return fig


def fig_accuracy_vs_memory(df: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for task, g in df.groupby("task"):
        ax.scatter(g["peak_mem_mib"], g["accuracy"], label=task)
        # neighbours in memory alternate above / below their point, so close configurations stay legible
        for i, (_, row) in enumerate(g.sort_values("peak_mem_mib").iterrows()):
            ax.annotate(row["config"], (row["peak_mem_mib"], row["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 4 if i % 2 == 0 else -10))
    return _finish(fig, ax, "measured peak training memory (MiB)", "accuracy", "accuracy vs memory per configuration", 8)


def fig_loss_curves(df: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (run, cfg), g in df.groupby(["run_id", "config"]):
        ax.plot(g["step"], g["loss"], label=f"{cfg} ({run})" if df["run_id"].nunique() > 4 else cfg)
    return _finish(fig, ax, "optimizer step", "training loss (answer tokens)", "loss curves", 7)


def fig_memory_breakdown(df: pd.DataFrame):
    """Per run: the planner's training-phase components stacked, the measured peak training memory (same
    definition, memory.PEAK_DEFINITION) as a black marker, the planner's error above each bar."""
    planned = df[df["kind"] == "planned"].pivot_table(index="run_id", columns="component", values="mib", aggfunc="sum")
    config_of = df.drop_duplicates("run_id").set_index("run_id")["config"]
    rank = {c: i for i, c in enumerate(config_order(config_of))}
    runs = sorted(config_of.index, key=lambda r: (rank[config_of[r]], r))
    meas = df[df["kind"] == "measured"].set_index("run_id")
    measured = meas["mib"].reindex(runs)
    measures = meas.get("measures", pd.Series(dtype=object)).reindex(runs)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.25 * len(runs) + 2), 4.4))
    if not planned.empty:
        planned.reindex(runs).fillna(0).plot.bar(stacked=True, ax=ax, rot=0, width=0.6)
    ax.scatter(range(len(runs)), measured.values, color="black", marker="_", s=600, zorder=3,
               label="measured peak (training phase)")
    total = planned.reindex(runs).fillna(0).sum(axis=1) if not planned.empty else pd.Series(0.0, index=runs)
    for i, run in enumerate(runs):
        m, t = measured[run], total[run]
        if measures[run] in (WHOLE_PROCESS, HEAP_KEPT):   # not what the planner predicts
            note = "whole process\n(older result)" if measures[run] == WHOLE_PROCESS else "heap kept\n(fast run)"
            ax.annotate(note, (i, m), fontsize=6, ha="center", textcoords="offset points", xytext=(0, 5))
        elif m and t:
            ax.annotate(f"{100 * (t - m) / m:+.0f}%", (i, max(m, t)), fontsize=7, ha="center",
                        textcoords="offset points", xytext=(0, 4))
    # '4-bit r4 pipeline2_1f1b': the configuration on one line, the run's tag on a second
    labels = [lbl.replace(" ", "\n", 2).replace("\n", " ", 1) for lbl in config_of.reindex(runs).values]
    ax.set_xticks(range(len(runs)), labels, rotation=0, fontsize=7)
    ax.set_xlabel("")
    ax.set_ylabel("MiB above the loaded process")
    ax.set_title("peak training memory (training phase): planner components vs measured", fontsize=10)
    ax.legend(fontsize=7)
    ax.margins(y=0.12)
    fig.tight_layout()
    return fig


def fig_confusions(frames: dict[str, pd.DataFrame], title: str = ""):
    """One heat-map per (name -> confusion frame), side by side."""
    frames = {k: frames[k] for k in config_order(frames)}  # base, 16-bit r8, 8-bit r8, 4-bit r4, others
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
        fig.suptitle(wrapped(title, max(60, 40 * n)), fontsize=9)
    fig.tight_layout()
    return fig


def fig_memory_at_scale(table: pd.DataFrame, paper_gb: dict | None = None):
    """Measured vs planner per model and configuration (grouped bars, GiB), titled with each model's measured
    4-bit / 16-bit ratio beside the paper's (FinLoRA's Llama-3.1-8B GPU numbers)."""
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


def metric_bars(data: pd.DataFrame, metric: str, title: str, note: str = ""):
    """A sweep's `<metric>_mean` per task (groups) and configuration (bars), `<metric>_std` as error bars; `note`
    (the machines, the base weights) under the title, so the PNG says where its numbers came from on its own."""
    piv = data.pivot(index="task", columns="config", values=f"{metric}_mean")
    err = data.pivot(index="task", columns="config", values=f"{metric}_std").fillna(0.0)
    order = config_order(piv.columns)
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(piv)), 3.8))
    piv[order].plot.bar(ax=ax, rot=30, yerr=err.reindex(columns=order, fill_value=0.0), capsize=2, width=0.8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(title)
    ax.set_title(f"{title} per task (mean over seeds; bars: std)" + (f"\n{wrapped(note, 110)}" if note else ""),
                 fontsize=10 if note else None)
    ax.legend(fontsize=8, ncols=min(len(order), 4))
    return fig
