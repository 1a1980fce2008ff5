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
