"""Figures from results: every figure is saved as PNG with a CSV of the plotted numbers beside it."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

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


def bar(data: pd.DataFrame, x: str, y: str, title: str, ylabel: str | None = None, hue: str | None = None):
    """A plain (grouped) bar chart; returns the figure."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if hue:
        piv = data.pivot_table(index=x, columns=hue, values=y, aggfunc="first")
        piv.plot.bar(ax=ax, rot=0)
    else:
        ax.bar(data[x].astype(str), data[y])
    ax.set_title(title)
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
