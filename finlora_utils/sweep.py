"""Batch reruns: one papermill execution per point of a parameter grid, resumable, failure-tolerant.

    python -m finlora_utils.sweep grids/fpb-ablation.yaml      (or: make sweep GRID=grids/fpb-ablation.yaml)

A grid file:

    name: fpb-ablation                 # output folder name under reports/sweeps/
    preset: cpu                        # preset whose parameters every point starts from
    notebooks: [03_finetune, 05_evaluation]   # run in order for every point, into the point's own folder
    params: {TASKS: fpb}               # fixed overrides for every point
    grid:                              # cartesian product of these lists
      PRECISIONS: [nf4, int8]
      SEED: [0, 1]
    include: [{PRECISIONS: bf16, SEED: 0}]    # optional extra points; one may name its own notebooks:
    #   {TASKS: nwgi, SEED: 0, notebooks: [05_evaluation]}   (zero-shot only: nwgi has no train split)
    timeout: 1800                      # optional per-cell timeout (s)

Each point writes reports/sweeps/<name>/points/<point_id>/{executed,results,figures,...} and, only when every
notebook succeeded, DONE.json. A rerun skips points with DONE.json; a failed point is recorded with its
notebook and cell and the sweep goes on. At the end the results of all finished points are aggregated
(mean ± std over seeds) into aggregate.csv and index.html.
"""
from __future__ import annotations

import argparse
import html
import itertools
import re
import sys
import time
from pathlib import Path

import pandas as pd

from .config import PRESETS, ConfigError
from .paths import project_root
from .results import atomic_write_text, load_results, now_iso, write_json
from .study import NotebookFailed, run_notebook

GRID_KEYS = {"name", "preset", "notebooks", "params", "grid", "include", "timeout"}


def load_grid(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: grid file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    unknown = set(spec) - GRID_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(GRID_KEYS))}")
    spec.setdefault("name", path.stem)
    spec.setdefault("preset", "cpu")
    spec.setdefault("params", {})
    spec.setdefault("grid", {})
    spec.setdefault("include", [])
    if spec["preset"] not in PRESETS:
        raise ConfigError(f"{path}: preset={spec['preset']!r}: expected one of {', '.join(PRESETS)}")
    if not spec.get("notebooks"):
        raise ConfigError(f"{path}: notebooks: expected a list of notebook names, e.g. [03_finetune]")
    for k, v in spec["grid"].items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{path}: grid.{k}={v!r}: expected a non-empty list of values")
    for i, extra in enumerate(spec["include"]):
        nbs = extra.get("notebooks") if isinstance(extra, dict) else None
        if not isinstance(extra, dict) or (nbs is not None and (not isinstance(nbs, list) or not nbs)):
            raise ConfigError(f"{path}: include[{i}]={extra!r}: expected a mapping of parameters, with an "
                              "optional non-empty list `notebooks`")
    return spec


def expand(spec: dict) -> list[dict]:
    """The points of a grid: the cartesian product, then the `include` extras, without duplicates."""
    keys = list(spec["grid"])
    points = [dict(zip(keys, values)) for values in itertools.product(*(spec["grid"][k] for k in keys))]
    for extra in spec["include"]:
        if extra not in points:
            points.append(dict(extra))
    return points


def point_id(point: dict) -> str:
    """Stable folder name: key-value pairs in key order, filesystem-safe."""
    parts = [f"{k.lower()}-{v}" for k, v in sorted(point.items())]
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "_".join(parts)) or "default"


def run_point(spec: dict, point: dict, out_root: Path) -> dict:
    pdir = out_root / "points" / point_id(point)
    done = pdir / "DONE.json"
    if done.exists():
        return {"point": point, "status": "skipped", "dir": str(pdir)}
    notebooks = point.get("notebooks") or spec["notebooks"]   # an include point may run fewer notebooks
    params = {**spec["params"], **{k: v for k, v in point.items() if k != "notebooks"}}
    t0 = time.time()
    for nb in notebooks:
        try:
            run_notebook(nb, spec["preset"], pdir, timeout=spec.get("timeout"), extra_params=params)
        except NotebookFailed as e:
            return {"point": point, "status": "failed", "notebook": nb, "error": str(e).splitlines()[0],
                    "executed": str(pdir / "executed" / f"{nb}.ipynb"), "dir": str(pdir)}
    write_json(done, {"point": point, "params": params, "notebooks": list(notebooks),
                      "finished": now_iso(), "wall_s": round(time.time() - t0, 1)})
    return {"point": point, "status": "done", "dir": str(pdir)}


def _config_label(res: dict) -> str:
    cfg = res.get("run_info", {}).get("config") or {}
    if not res.get("train_info"):
        return "base"
    bits = {"fp32": 32, "bf16": 16, "int8": 8, "nf4": 4, "fp4": 4}.get(cfg.get("precision"), "?")
    rank = (cfg.get("lora") or {}).get("rank", "?")
    variant = (cfg.get("lora") or {}).get("variant", "lora")
    return f"{bits}-bit r{rank}" + ("" if variant == "lora" else f" {variant}")


def aggregate(out_root: Path) -> pd.DataFrame:
    """One row per (task, configuration): mean ± std of accuracy and weighted F1 over seeds/points."""
    rows = []
    for done in sorted((out_root / "points").glob("*/DONE.json")):
        rdir = done.parent / "results"
        if not rdir.is_dir():
            continue
        for res in load_results(rdir):
            for task, ev in (res.get("eval_info") or {}).items():
                if not isinstance(ev, dict) or "accuracy" not in ev:
                    continue
                rows.append(dict(task=task, config=_config_label(res), seed=res["run_info"].get("seed"),
                                 mode=ev.get("mode"), accuracy=ev["accuracy"], f1_weighted=ev.get("f1_weighted"),
                                 point=done.parent.name, path=res["_path"]))
    if not rows:
        return pd.DataFrame(columns=["task", "config", "n", "accuracy_mean", "accuracy_std",
                                     "f1_weighted_mean", "f1_weighted_std"])
    df = pd.DataFrame(rows).drop_duplicates(subset=["path", "task"])
    g = df.groupby(["task", "config"], sort=True)
    return g.agg(n=("accuracy", "size"), accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", "std"),
                 f1_weighted_mean=("f1_weighted", "mean"), f1_weighted_std=("f1_weighted", "std")).reset_index()


def paper_layout(agg: pd.DataFrame) -> pd.DataFrame:
    """Rows = tasks, columns = configurations, cells 'acc ± std / F1 ± std' (std only with several seeds)."""
    def cell(r):
        def fmt(m, s):
            return f"{m:.3f}" + (f" ± {s:.3f}" if r["n"] > 1 and pd.notna(s) else "")
        return f"{fmt(r['accuracy_mean'], r['accuracy_std'])} / {fmt(r['f1_weighted_mean'], r['f1_weighted_std'])}"
    if agg.empty:
        return pd.DataFrame()
    return agg.assign(cell=agg.apply(cell, axis=1)).pivot(index="task", columns="config", values="cell").fillna("—")


def write_report(spec: dict, out_root: Path, outcomes: list[dict]) -> Path:
    agg = aggregate(out_root)
    atomic_write_text(out_root / "aggregate.csv", agg.to_csv(index=False))
    table = paper_layout(agg)
    failed = [o for o in outcomes if o["status"] == "failed"]
    fail_html = "".join(f"<li><code>{html.escape(point_id(o['point']))}</code>: {html.escape(o['notebook'])} — "
                        f"{html.escape(o['error'])}</li>" for o in failed) or "<li>none</li>"
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>Sweep {html.escape(spec['name'])}</title></head>
<body style="font-family:sans-serif;max-width:1000px;margin:2em auto">
<h1>Sweep {html.escape(spec['name'])}</h1>
<p>Preset <b>{html.escape(spec['preset'])}</b>, notebooks {html.escape(', '.join(spec['notebooks']))},
{len(outcomes)} points ({sum(o['status'] != 'failed' for o in outcomes)} finished), generated {now_iso()}.
Cells: accuracy / weighted F1, mean ± std over the points that share a task and configuration.</p>
{table.to_html(escape=True) if not table.empty else '<p>No evaluated results yet.</p>'}
<h2>Failed points</h2><ul>{fail_html}</ul>
<p>Numbers: <a href="aggregate.csv">aggregate.csv</a>; each point's executed notebooks under <code>points/</code>.</p>
</body></html>
"""
    return atomic_write_text(out_root / "index.html", doc)


def run_sweep(grid_path: str | Path, output_dir: str | Path | None = None) -> tuple[list[dict], Path]:
    spec = load_grid(grid_path)
    out_root = Path(output_dir or project_root() / "reports" / "sweeps" / spec["name"]).resolve()
    points = expand(spec)
    outcomes = []
    for i, point in enumerate(points, 1):
        print(f"[sweep] point {i}/{len(points)} {point_id(point)}", flush=True)
        o = run_point(spec, point, out_root)
        print(f"[sweep] point {i}/{len(points)} {o['status']}" + (f": {o['error']}" if o["status"] == "failed" else ""),
              flush=True)
        outcomes.append(o)
    write_json(out_root / "outcomes.json", outcomes)
    return outcomes, write_report(spec, out_root, outcomes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finlora_utils.sweep", description=__doc__.splitlines()[0])
    ap.add_argument("grid", help="grid YAML file")
    ap.add_argument("--output-dir", default=None, help="default: reports/sweeps/<name>")
    args = ap.parse_args(argv)
    try:
        outcomes, index = run_sweep(args.grid, args.output_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [o for o in outcomes if o["status"] == "failed"]
    print(f"[sweep] {len(outcomes) - len(failed)} finished ({sum(o['status'] == 'skipped' for o in outcomes)} "
          f"skipped as already done), {len(failed)} failed; report: {index}")
    for o in failed:
        print(f"[sweep] FAILED {point_id(o['point'])}: {o['error']} (see {o['executed']})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
