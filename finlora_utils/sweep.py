"""Batch reruns: one papermill execution per point of a parameter grid, resumable, failure-tolerant.

    python -m finlora_utils.sweep grids/fpb-ablation.yaml      (or: make sweep GRID=grids/fpb-ablation.yaml)

A grid file:

    name: fpb-ablation                 # output folder name under reports/sweeps/
    preset: cpu                        # preset whose parameters every point starts from
    notebooks: [03_finetune, 05_evaluation]   # run in order for every point, into the point's own folder
    params: {TASKS: fpb}               # fixed overrides for every point
    grid:                              # cartesian product of these lists
      CONFIGS: ["nf4:4", "int8:8"]     # notebook parameters (precision:rank per run here)
      SEED: [0, 1]
    include: [{CONFIGS: "auto:8", SEED: 0}]    # optional extra points; one may name its own notebooks:
    #   {TASKS: nwgi, SEED: 0, notebooks: [05_evaluation]}   (zero-shot only: nwgi has no train split)
    timeout: 1800                      # optional per-cell timeout (s)

Each point writes reports/sweeps/<name>/points/<point_id>/{executed,results,figures,...} and, only when every
notebook succeeded, DONE.json. A rerun skips points with DONE.json; a failed point is recorded with its
notebook and cell and the sweep goes on. At the end the results of all finished points are aggregated
(mean ± std over seeds) into aggregate.csv, figures/sweep_accuracy.png and sweep_f1_weighted.png (each with
its CSV) and index.html: the paper-layout table, the figures, what ran and each point's time. A varied
parameter other than TASKS, SEED and CONFIGS (LR, ...) gets its own columns instead of being averaged.
`--report-only` re-renders the report from the finished points; `--rescore` first re-applies the current
generated-answer metrics to the predictions those points stored (evaluate.rescore: no model, no rerun).
"""
from __future__ import annotations

import argparse
import html
import itertools
import json
import re
import sys
import time
from pathlib import Path

import pandas as pd

from .config import PRESETS, ConfigError, read_json_object
from .errors import cli_entry
from .paths import project_root
from .results import atomic_write_text, folder_lock, git_commit, load_results, now_iso, write_json
from .study import NotebookFailed, Progress, notebook_parameters, run_notebook, unknown_parameters

GRID_KEYS = {"name", "preset", "notebooks", "params", "grid", "include", "timeout"}


def load_grid(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: grid file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save the "
                          "grid as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a YAML {type(spec).__name__}, expected a mapping with keys "
                          f"{', '.join(sorted(GRID_KEYS))}")
    unknown = set(spec) - GRID_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(GRID_KEYS))}")
    spec.setdefault("name", path.stem)
    if not isinstance(spec["name"], str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", spec["name"]):
        # it names reports/sweeps/<name>: a path or a list there would write elsewhere or fail after every point
        raise ConfigError(f"{path}: name={spec['name']!r}: expected a plain folder name (letters, digits, . _ -)")
    spec.setdefault("preset", "cpu")
    spec.setdefault("params", {})
    spec.setdefault("grid", {})
    spec.setdefault("include", [])
    if spec["preset"] not in PRESETS:
        raise ConfigError(f"{path}: preset={spec['preset']!r}: expected one of {', '.join(PRESETS)}")
    if not spec.get("notebooks"):
        raise ConfigError(f"{path}: notebooks: expected a list of notebook names, e.g. [03_finetune]")
    timeout = spec.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0):
        raise ConfigError(f"{path}: timeout={timeout!r}: expected seconds per notebook cell, an integer > 0")
    for key in ("grid", "params"):
        if not isinstance(spec[key], dict):
            raise ConfigError(f"{path}: {key}={spec[key]!r}: expected a mapping of notebook parameters")
    if not isinstance(spec["include"], list):
        raise ConfigError(f"{path}: include={spec['include']!r}: expected a list of mappings of parameters")
    for k, v in spec["grid"].items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{path}: grid.{k}={v!r}: expected a non-empty list of values")
    for i, extra in enumerate(spec["include"]):
        nbs = extra.get("notebooks") if isinstance(extra, dict) else None
        if not isinstance(extra, dict) or (nbs is not None and (not isinstance(nbs, list) or not nbs)):
            raise ConfigError(f"{path}: include[{i}]={extra!r}: expected a mapping of parameters, with an "
                              "optional non-empty list `notebooks`")
    # a notebook named with its file's suffix is the same notebook (points' folders and records use the bare name)
    spec["notebooks"] = _bare_names(spec["notebooks"])
    for extra in spec["include"]:
        if "notebooks" in extra:
            extra["notebooks"] = _bare_names(extra["notebooks"])
    _check_names(path, spec)
    return spec


def _bare_names(nbs):
    return [nb.removesuffix(".ipynb") if isinstance(nb, str) else nb for nb in nbs] if isinstance(nbs, list) else nbs


def _check_names(path: Path, spec: dict) -> None:
    """Every notebook must exist and every parameter name must be declared by one of the notebooks it goes to:
    papermill itself only logs an unknown name and runs on with the default."""
    for where, nbs in [("notebooks", spec["notebooks"])] + [(f"include[{i}].notebooks", e["notebooks"])
                                                            for i, e in enumerate(spec["include"]) if "notebooks" in e]:
        if not isinstance(nbs, list) or not all(isinstance(nb, str) for nb in nbs):
            raise ConfigError(f"{path}: {where}={nbs!r}: expected a list of notebook names")
        for nb in nbs:
            try:
                notebook_parameters(nb)
            except FileNotFoundError as e:
                raise ConfigError(f"{path}: {where}: {e}") from None
    checks = [("params", spec["params"], spec["notebooks"]), ("grid", spec["grid"], spec["notebooks"])]
    checks += [(f"include[{i}]", {k: v for k, v in e.items() if k != "notebooks"},
                e.get("notebooks") or spec["notebooks"]) for i, e in enumerate(spec["include"])]
    for where, params, nbs in checks:
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: {where}={params!r}: expected a mapping of notebook parameters")
        bad = unknown_parameters(params, nbs)
        if bad:
            raise ConfigError(f"{path}: {where}: {bad[0]}")


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


def point_plan(spec: dict, point: dict) -> tuple[list[str], dict]:
    """(notebooks, parameters) a point runs with: the grid's fixed params under the point's own values."""
    notebooks = point.get("notebooks") or spec["notebooks"]   # an include point may run fewer notebooks
    return list(notebooks), {**spec["params"], **{k: v for k, v in point.items() if k != "notebooks"}}


def check_finished_points(spec: dict, points: list[dict], out_root: Path) -> None:
    """Before anything runs: a finished point (DONE.json) whose fixed parameters or notebooks the grid has since
    changed is an error naming the first change; skipping it would report results made with the old values
    under the new ones."""
    for point in points:
        done = out_root / "points" / point_id(point) / "DONE.json"
        if not done.exists():
            continue
        stored = read_json_object(done, "a finished point's record (point, params, notebooks, ...)", ConfigError)
        notebooks, params = point_plan(spec, point)
        before, now = {}, {}
        if isinstance(stored.get("params"), dict):   # a record without them (hand-made, older) cannot be compared
            keys = set(params) | set(stored["params"])
            before.update({k: stored["params"].get(k) for k in keys})
            now.update({k: params.get(k) for k in keys})
        if "notebooks" in stored:
            before["notebooks"], now["notebooks"] = stored["notebooks"], notebooks
        changed = sorted(k for k in before if before[k] != now[k])
        if changed:
            k = changed[0]
            raise ConfigError(f"{done}: the point ran with {k}={before[k]!r}, the grid now says {now[k]!r}; expected "
                              "the grid as it ran, another --output-dir for the new values, or that point's folder "
                              "removed to run it again")


def run_point(spec: dict, point: dict, out_root: Path, progress: Progress | None = None) -> dict:
    pdir = out_root / "points" / point_id(point)
    done = pdir / "DONE.json"
    if done.exists():
        return {"point": point, "status": "skipped", "dir": str(pdir)}
    notebooks, params = point_plan(spec, point)
    t0, started, commit = time.time(), now_iso(), git_commit()   # the code the point runs, read before it runs
    for nb in notebooks:
        try:
            # each notebook gets the parameters it declares (load_grid checked that every name has a taker)
            own = set(notebook_parameters(nb))
            run_notebook(nb, spec["preset"], pdir, timeout=spec.get("timeout"),
                         extra_params={k: v for k, v in params.items() if k in own}, progress=progress)
        except NotebookFailed as e:
            return {"point": point, "status": "failed", "notebook": nb, "error": str(e).splitlines()[0],
                    "executed": str(pdir / "executed" / f"{nb}.ipynb"), "dir": str(pdir)}
    write_json(done, {"point": point, "params": params, "notebooks": list(notebooks), "started": started,
                      "finished": now_iso(), "wall_s": round(time.time() - t0, 1), "git_commit": commit})
    return {"point": point, "status": "done", "dir": str(pdir)}


# Point parameters that the table already shows (rows, columns, seeds); any other parameter that differs
# between points (LR, ...) splits a configuration's column so different settings are never averaged as seeds.
# COMPARE_GENERATE / BASE_MODES only add protocols beside the primary one, so they split nothing either.
SHOWN_PARAMS = {"TASKS", "SEED", "CONFIGS", "notebooks", "COMPARE_GENERATE", "BASE_MODES"}
AGG_COLUMNS = ["task", "config", "n", "accuracy_mean", "accuracy_std", "f1_weighted_mean", "f1_weighted_std",
               "mode", "test_examples", "majority_baseline", "majority_f1_weighted", "train_truncated",
               "test_truncated", "train_s", "peak_mem_gib", "peak_kind", "peak_machine", "machines", "note"]


def _point_rows(done: Path) -> pd.DataFrame:
    """report.eval_table of one finished point: each adapter on the tasks it was trained on, the base in its
    primary mode (score for classification) and, where it ran, calibrated as its own 'base calibrated' column."""
    from .report import eval_table, machine, peak_measures

    rdir = done.parent / "results"
    runs = load_results(rdir) if rdir.is_dir() else []
    runs = [r for r in runs if r.get("eval_info")]
    if not runs:
        return pd.DataFrame()
    point = json.loads(done.read_text()).get("point", {})
    extra = ",".join(f"{k}={v}" for k, v in sorted(point.items()) if k not in SHOWN_PARAMS)
    df = eval_table(runs)
    df = df[df["own_task"] & (df["primary"] | ((df["config"] == "base") & (df["mode"] == "calibrated")))].copy()
    df.loc[~df["primary"], "config"] = "base calibrated"
    df["setting"] = extra
    # Generated answers (formula, XBRL, FinanceBench) have no label set: their F1 is token F1 over the answer.
    df["f1_weighted"] = df["f1_weighted"].fillna(df["token_f1"])
    by_id = {r["run_id"]: r for r in runs}
    df["seed"] = [by_id[i]["run_info"].get("seed") for i in df["run_id"]]
    df["path"] = [by_id[i]["_path"] for i in df["run_id"]]
    df["train_truncated"] = [(by_id[i].get("train_info") or {}).get("truncated", {}).get(t)
                             for i, t in zip(df["run_id"], df["task"])]
    df["test_truncated"] = [((by_id[i].get("eval_info") or {}).get(t) or {}).get("truncated")
                            for i, t in zip(df["run_id"], df["task"])]
    train = [by_id[i].get("train_info") or {} for i in df["run_id"]]
    df["train_s"] = [t.get("wall_s") for t in train]
    df["peak_mem_gib"] = [t["peak_mem_bytes"] / 2 ** 30 if t.get("peak_mem_bytes") else None for t in train]
    df["peak_kind"] = [peak_measures(by_id[i]) if t.get("peak_mem_bytes") else None
                       for i, t in zip(df["run_id"], train)]
    df["machine"] = [machine(by_id[i]) for i in df["run_id"]]
    return df.assign(point=done.parent.name)


def _task_note(task: str, configs: set[str]) -> str:
    from .data.tasks import get_task

    try:
        t = get_task(task.removesuffix(" (3-class)"))
    except (KeyError, ValueError):
        return ""
    notes = []
    if not t.has_train:
        # nwgi has none upstream; FinLoRA's XBRL train files are Git LFS blobs the data does not hold
        notes.append("zero-shot only: no train split available")
    elif t.variant_of:
        notes.append(f"base scored against FinLoRA's labels of {t.variant_of}")
    elif configs <= {"base", "base calibrated"}:
        notes.append("evaluation only")
    if t.metric == "batched_accuracy":
        notes.append("generated; accuracy = per-tag accuracy of the comma-separated answer, F1 = token F1")
    elif t.kind != "classification":
        notes.append("generated; accuracy = exact match, or numeric match where the gold is a number"
                     + (" (BERTScore needs the hub)" if t.metric == "bertscore" else "") + ", F1 = token F1")
    return "; ".join(notes)


def seed_rows(out_root: Path) -> pd.DataFrame:
    """Every finished point's rows (one per run, task and shown mode; a run two points share counted once):
    what aggregate averages, kept per seed for paired comparisons."""
    parts = [_point_rows(done) for done in sorted((out_root / "points").glob("*/DONE.json"))]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True).drop_duplicates(subset=["path", "task", "config"])


def bits_rank_section(out_root: Path) -> str:
    """HTML of the bits x rank two-factor table (accuracy and weighted F1, mean ± std over seeds) and the
    sentence splitting 8-bit r8 -> 4-bit r4 into rank and bits, per task with all four cells; writes
    bits_rank.csv (per-seed rows). Empty string when no task has two bit widths at two ranks."""
    from .report import bits_rank_decomposition, bits_rank_rows, bits_rank_sentence, bits_rank_table

    rows = seed_rows(out_root)
    br = bits_rank_rows(rows, "accuracy")
    if br.empty:
        return ""
    decs = {t: bits_rank_decomposition(rows, t) for t in sorted(br["task"].unique())}
    decs = {t: d for t, d in decs.items() if d is not None}
    if not decs:
        return ""
    f1 = bits_rank_rows(rows, "f1_weighted")
    atomic_write_text(out_root / "bits_rank.csv", br.merge(f1, on=["task", "config", "seed", "bits", "rank"],
                                                           how="left").to_csv(index=False))
    sentences = "".join(f"<p>{html.escape(bits_rank_sentence(d))}</p>" for d in decs.values())
    f1_sentences = "".join(f"<p>{html.escape(bits_rank_sentence(bits_rank_decomposition(rows, t, 'f1_weighted')))}</p>"
                           for t in decs)
    return f"""<h2>Bits × rank</h2>
<p>Each adapter at each bit width and rank, same data, steps, learning rate and alpha; cells mean ± std over
seeds (n). The split below pairs the configurations of each seed (same training sample, order and test
sample) and averages each factor's effect over the other factor's two levels, so rank + bits = the change.</p>
<h3>Accuracy</h3>{bits_rank_table(rows, "accuracy").to_html(escape=True)}{sentences}
<h3>Weighted F1</h3>{bits_rank_table(rows, "f1_weighted").to_html(escape=True)}{f1_sentences}
<p>Per-seed numbers: <a href="bits_rank.csv">bits_rank.csv</a>.</p>
"""


def aggregate(out_root: Path) -> pd.DataFrame:
    """One row per (task, configuration): mean ± std of accuracy and weighted F1 over seeds/points, with the
    test size, the majority-class baseline and how many train/test prompts were truncated."""
    df = seed_rows(out_root)
    if df.empty:
        return pd.DataFrame(columns=AGG_COLUMNS)
    # A setting that differs between points of the same task and configuration splits its column; one that
    # a task's points share (a smaller test sample for long prompts) is not worth a column of its own.
    split = (df.groupby(["task", "config"])["setting"].transform("nunique") > 1) & (df["setting"] != "")
    df.loc[split, "config"] = df.loc[split, "config"] + " (" + df.loc[split, "setting"] + ")"
    # The same zero-shot evaluation (task, mode, seed, test size, precision) repeated by several points - the
    # base of a single-task and of the multi-task point - is one measurement, not two seeds.
    base = df["config"].str.startswith("base")
    df = pd.concat([df[~base], df[base].drop_duplicates(subset=["task", "config", "mode", "seed", "n",
                                                                "eval_precision", "model"])])
    g = df.groupby(["task", "config"], sort=True)
    agg = g.agg(n=("accuracy", "size"), accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", "std"),
                f1_weighted_mean=("f1_weighted", "mean"), f1_weighted_std=("f1_weighted", "std"),
                mode=("mode", "first"), test_examples=("n", "first"), majority_baseline=("majority_baseline", "first"),
                majority_f1_weighted=("majority_f1_weighted", "first"), train_truncated=("train_truncated", "max"),
                test_truncated=("test_truncated", "max"), train_s=("train_s", "mean"),
                peak_mem_gib=("peak_mem_gib", "max"),
                machines=("machine", lambda m: ", ".join(sorted(set(m))))).reset_index()
    # the peak shown is the largest: say which definition it follows and where it was measured
    peaks = df.dropna(subset=["peak_mem_gib"]).sort_values("peak_mem_gib").groupby(["task", "config"]).last()
    agg = agg.merge(peaks[["peak_kind", "machine"]].rename(columns={"machine": "peak_machine"}).reset_index(),
                    on=["task", "config"], how="left")
    configs = df.groupby("task")["config"].agg(set)
    agg["note"] = [_task_note(t, configs[t]) for t in agg["task"]]
    return agg[AGG_COLUMNS]


def paper_layout(agg: pd.DataFrame) -> pd.DataFrame:
    """Rows = tasks, columns = configurations in the paper's order, cells 'acc ± std / F1 ± std' (std only with
    several seeds), then the test size, the majority-class baseline, truncations and a note per task."""
    from .report import config_order

    def fmt(m, s, n):
        if pd.isna(m):
            return "—"
        return f"{m:.3f}" + (f" ± {s:.3f}" if n > 1 and pd.notna(s) else "")

    if agg.empty:
        return pd.DataFrame()
    cells = agg.assign(cell=[f"{fmt(r.accuracy_mean, r.accuracy_std, r.n)} / {fmt(r.f1_weighted_mean, r.f1_weighted_std, r.n)}"
                             for r in agg.itertuples()])
    table = cells.pivot(index="task", columns="config", values="cell").fillna("")
    table = table[config_order(table.columns)]
    per_task = agg.groupby("task")
    table["test n"] = per_task["test_examples"].max().astype("Int64")
    maj = per_task[["majority_baseline", "majority_f1_weighted"]].first()
    table["majority"] = [fmt(a, None, 1) + " / " + fmt(f, None, 1) if pd.notna(a) else "" for a, f in maj.itertuples(index=False)]
    trunc = per_task[["train_truncated", "test_truncated"]].max()
    table["truncated (train / test)"] = [f"{'' if pd.isna(a) else int(a)} / {'' if pd.isna(b) else int(b)}"
                                         for a, b in trunc.itertuples(index=False)]
    table["note"] = per_task["note"].first()
    table.columns.name = None
    return table


def cost_layout(agg: pd.DataFrame) -> pd.DataFrame:
    """Rows = tasks, columns = trained configurations, cells 'train s / peak GiB (definition, machine)': mean time,
    the largest peak, and which peak that is and where it was measured (runs of two machines or two definitions
    can share a cell)."""
    from .report import config_order

    trained = agg.dropna(subset=["train_s"])
    if trained.empty:
        return pd.DataFrame()
    cells = trained.assign(cell=[f"{t:.0f} s / ? GiB" if pd.isna(m) else f"{t:.0f} s / {m:.2f} GiB ({k}; {where})"
                                 for t, m, k, where in zip(trained["train_s"], trained["peak_mem_gib"],
                                                           trained["peak_kind"], trained["peak_machine"])])
    table = cells.pivot(index="task", columns="config", values="cell").fillna("")
    table = table[config_order(table.columns)]
    table.columns.name = None
    return table


def accuracy_figure(agg: pd.DataFrame, figures_dir: Path, note: str = "") -> list[Path]:
    """Accuracy and weighted F1 per task and configuration, one grouped bar chart each (PNG + CSV); `note`
    (report.figure_note: machines, base weights) goes under the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import metric_bars, save_figure

    pngs = []
    for metric, title in (("accuracy", "Accuracy"), ("f1_weighted", "Weighted F1")):
        data = agg.dropna(subset=[f"{metric}_mean"])[["task", "config", "n", f"{metric}_mean", f"{metric}_std"]]
        if data.empty:
            continue
        fig = metric_bars(data, metric, title, note)
        png, _ = save_figure(fig, data, f"sweep_{metric}", figures_dir)
        plt.close(fig)
        pngs.append(png)
    return pngs


def _points_table(out_root: Path, outcomes: list[dict]) -> pd.DataFrame:
    rows = []
    for o in outcomes:
        pid = point_id(o["point"])
        done = out_root / "points" / pid / "DONE.json"
        meta = json.loads(done.read_text()) if done.exists() else {}
        rows.append({"point": pid, "status": o["status"], "notebooks": ", ".join(meta.get("notebooks", [])),
                     "finished": meta.get("finished", ""),
                     "wall_min": round(meta["wall_s"] / 60, 1) if "wall_s" in meta else None})
    return pd.DataFrame(rows)


# The figure behind each claim of report.claims, as links inside the sweep's index.html.
CLAIM_LINKS = {"finetuned_beats_base": "figures/sweep_accuracy.png", "4bit_close_to_8bit": "figures/sweep_accuracy.png",
               "4bit_memory": "#cost", "adapter_size": "#what-ran"}


def write_report(spec: dict, out_root: Path, outcomes: list[dict]) -> Path:
    from .report import figure_note, header, paper_sections_html

    agg = aggregate(out_root)
    atomic_write_text(out_root / "aggregate.csv", agg.to_csv(index=False))
    table = paper_layout(agg)
    cost = cost_layout(agg)
    runs = []
    for done in sorted((out_root / "points").glob("*/DONE.json")):
        if (done.parent / "results").is_dir():
            runs += load_results(done.parent / "results")
    note = figure_note(runs) if runs else ""
    pngs = accuracy_figure(agg, out_root / "figures", note) if not agg.empty else []
    what_ran = pd.Series(header(runs)).to_frame("").to_html(escape=True, header=False) if runs else ""
    paper_check = paper_sections_html(runs, CLAIM_LINKS) if runs else ""
    points = _points_table(out_root, outcomes)
    total_min = points["wall_min"].sum() if not points.empty else 0
    failed = [o for o in outcomes if o["status"] == "failed"]
    fail_html = "".join(f"<li><code>{html.escape(point_id(o['point']))}</code>: {html.escape(o['notebook'])} — "
                        f"{html.escape(o['error'])}</li>" for o in failed) or "<li>none</li>"
    figs = "".join(f'<p><img src="figures/{p.name}" style="max-width:100%"><br>{html.escape(note)}. '
                   f'<a href="figures/{p.with_suffix(".csv").name}">numbers</a></p>' for p in pngs)
    params = html.escape(", ".join(f"{k}={v}" for k, v in spec["params"].items()))
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>Sweep {html.escape(spec['name'])}</title>
<style>table{{border-collapse:collapse;font-size:90%}}td,th{{border:1px solid #ccc;padding:2px 6px}}</style></head>
<body style="font-family:sans-serif;max-width:1200px;margin:2em auto">
<h1>Sweep {html.escape(spec['name'])}</h1>
<p>Preset <b>{html.escape(spec['preset'])}</b>, notebooks {html.escape(', '.join(spec['notebooks']))},
fixed parameters {params}; {len(outcomes)} points ({sum(o['status'] in ('done', 'skipped') for o in outcomes)} finished,
{total_min:.0f} min of notebook time), generated {now_iso()}.</p>
{paper_check}
<h2 id="table">Every task and configuration</h2>
<p>Cells: accuracy / weighted F1 on each task's test split (the first <i>test n</i> examples of a stratified
subsample), mean ± std over the points that share a task and configuration. An adapter is scored on the tasks
it was trained on; <i>base</i> is the zero-shot model in its primary mode (label scoring for classification,
generation for tasks without a label set), <i>base calibrated</i> the same with per-label bias removed;
<i>majority</i> always predicts the most frequent test label. <i>multi-task</i>: one adapter trained on the
union of the single-task training sets.</p>
{table.to_html(escape=True) if not table.empty else '<p>No evaluated results yet.</p>'}
{figs}
{bits_rank_section(out_root)}
<h2 id="cost">Cost</h2><p>Training wall time (mean over the points of a cell) and peak memory (the largest) per
adapter; in brackets which peak that is and the machine it was measured on. <i>training phase</i>: the resident
set's high-water mark during the training loop above the loaded process (on a GPU, torch's allocator peak);
<i>whole process</i>: the high-water mark from process start, Python and torch included (results written before
the training-phase definition); <i>heap kept</i>: freed memory glibc kept for reuse is counted too. Compare
within a column, not across, where the machines or definitions differ.</p>
{cost.to_html(escape=True) if not cost.empty else '<p>No finetuned runs.</p>'}
<h2 id="what-ran">What ran</h2>{what_ran}
<h2>Points</h2>{points.to_html(escape=True, index=False) if not points.empty else ''}
<h2>Failed points</h2><ul>{fail_html}</ul>
<p>Numbers: <a href="aggregate.csv">aggregate.csv</a>; each point's executed notebooks and results JSON under
<code>points/</code>.</p>
</body></html>
"""
    return atomic_write_text(out_root / "index.html", doc)


def run_sweep(grid_path: str | Path, output_dir: str | Path | None = None,
              report_only: bool = False) -> tuple[list[dict], Path]:
    """Run every unfinished point, then write the report; report_only re-renders it from what finished."""
    spec = load_grid(grid_path)
    out_root = Path(output_dir or project_root() / "reports" / "sweeps" / spec["name"]).resolve()
    points = expand(spec)
    if report_only and not (out_root / "points").is_dir():   # a mistyped folder would get an empty report
        raise ConfigError(f"output_dir={str(out_root)!r}: no points/ folder; expected the folder a sweep of this grid "
                          "ran into (--output-dir as it ran, or reports/sweeps/<name>)")
    check_finished_points(spec, points, out_root)   # a report must not show old values' results under new ones
    if report_only:
        outcomes = [{"point": p, "status": "skipped" if (out_root / "points" / point_id(p) / "DONE.json").exists()
                     else "not run", "dir": str(out_root / "points" / point_id(p))} for p in points]
        return outcomes, write_report(spec, out_root, outcomes)
    outcomes = []
    with folder_lock(out_root, f"sweep {grid_path}"):   # two sweeps into one folder would mix their points
        progress = Progress(out_root / "sweep.log")   # the same lines as the terminal, kept across reruns
        try:
            for i, point in enumerate(points, 1):
                progress.line(f"[sweep] point {i}/{len(points)} {point_id(point)}")
                o = run_point(spec, point, out_root, progress)
                progress.line(f"[sweep] point {i}/{len(points)} {o['status']}"
                              + (f": {o['error']}" if o["status"] == "failed" else ""))
                outcomes.append(o)
        finally:
            progress.close()
        write_json(out_root / "outcomes.json", outcomes)
        return outcomes, write_report(spec, out_root, outcomes)


def rescore_points(grid_path: str | Path, output_dir: str | Path | None = None) -> list[tuple[Path, dict]]:
    """evaluate.rescore on every results file of every finished point, with the point's test sample."""
    from .evaluate import rescore

    commit = git_commit()   # before the first rewrite: each rewritten file makes the tree look dirty
    spec = load_grid(grid_path)
    out_root = Path(output_dir or project_root() / "reports" / "sweeps" / spec["name"]).resolve()
    check_finished_points(spec, expand(spec), out_root)   # before any file is rewritten, as the report needs it
    done = []
    for d in sorted((out_root / "points").glob("*/DONE.json")):
        done_info = json.loads(d.read_text())
        params = done_info.get("params") or done_info.get("point") or {}
        for f in sorted((d.parent / "results").glob("*.json")):
            changed = rescore(f, max_samples=params.get("MAX_TEST_SAMPLES") or None, seed=params.get("SEED", 0),
                              commit=commit)
            if changed:
                done.append((f, changed))
    return done


@cli_entry
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finlora_utils sweep", description=__doc__.splitlines()[0])
    ap.add_argument("grid", help="grid YAML file")
    ap.add_argument("--output-dir", default=None, help="default: reports/sweeps/<name>")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: re-render the aggregate report from the points that finished")
    ap.add_argument("--rescore", action="store_true",
                    help="re-apply today's metrics to the generated answers finished points stored, then re-render")
    args = ap.parse_args(argv)
    try:
        if args.rescore:
            for f, changed in rescore_points(args.grid, args.output_dir):
                for task, c in changed.items():
                    print(f"[sweep] rescored {f.parent.parent.name}/{f.name} {task}: accuracy "
                          f"{c['before']['accuracy']:.4f} -> {c['after']['accuracy']:.4f}")
            args.report_only = True
        outcomes, index = run_sweep(args.grid, args.output_dir, args.report_only)
    except ValueError as e:   # ConfigError, EvalError (rescore), ResultsError: each names file and field
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [o for o in outcomes if o["status"] == "failed"]
    if args.report_only:
        missing = [point_id(o["point"]) for o in outcomes if o["status"] != "skipped"]
        print(f"[sweep] report of {len(outcomes) - len(missing)} finished points: {index}"
              + (f"; not finished: {', '.join(missing)}" if missing else ""))
        return 0
    print(f"[sweep] {len(outcomes) - len(failed)} finished ({sum(o['status'] == 'skipped' for o in outcomes)} "
          f"skipped as already done), {len(failed)} failed; report: {index}")
    for o in failed:
        print(f"[sweep] FAILED {point_id(o['point'])}: {o['error']} (see {o['executed']})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
