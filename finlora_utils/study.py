"""Run the study notebooks through papermill with a preset, render HTML and an index.

    python -m finlora_utils.study all --preset cpu        # what `make study` runs
    python -m finlora_utils.study run 03_finetune --preset smoke

While it runs, the terminal shows which notebook of how many, each code cell as it starts, and the lines
the package prints (training step k/n, loss, tokens/s, ETA); the same text goes to
``<output-dir>/executed/study.log``. Offline without the real data (``FINLORA_DATA_DIR`` unset, downloads
impossible or disabled with ``FINLORA_OFFLINE=1``) the sentiment tasks use the kit's synthetic sample set, every
page and the index say ``data: sample``, and tasks without any data are skipped with one line each.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import html
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from .config import PRESETS, ConfigError, load_preset
from .errors import cli_entry
from . import hardware
from .paths import project_root
from .results import atomic_write_text, folder_lock, relativize_text

NOTEBOOKS = ("00_data", "01_quantization", "02_lora_setup", "03_finetune", "04_parallel",
             "05_evaluation", "06_report")
LOG_NAME = "study.log"
ENGINE = "finlora-progress"


class NotebookFailed(RuntimeError):
    pass


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def available_notebooks() -> list[str]:
    """The study's notebooks that exist in this checkout, in study order."""
    return [n for n in NOTEBOOKS if (notebooks_dir() / f"{n}.ipynb").exists()]


def notebook_path(name: str) -> Path:
    src = notebooks_dir() / f"{name.removesuffix('.ipynb')}.ipynb"
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such notebook; available: {', '.join(available_notebooks())}")
    return src


def notebook_parameters(name: str) -> list[str]:
    """The names assigned in the notebook's cell tagged `parameters`, in order."""
    return list(parameter_defaults(name))


def parameter_defaults(name: str) -> dict:
    """{name: default value} of the notebook's cell tagged `parameters` (flat literals; None where not one)."""
    import nbformat

    nb = nbformat.read(str(notebook_path(name)), as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            out = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign):
                    for t in node.targets:
                        if isinstance(t, ast.Name):
                            try:
                                out[t.id] = ast.literal_eval(node.value)
                            except ValueError:
                                out[t.id] = None
            return out
    return {}


def assigned_names(name: str) -> set[str]:
    """Every name a code cell of the notebook assigns (cells that are not plain Python, e.g. magics, skipped)."""
    import nbformat

    out = set()
    for cell in nbformat.read(str(notebook_path(name)), as_version=4).cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        out |= {t.id for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
                for tgt in (node.targets if isinstance(node, ast.Assign) else [node.target])
                for t in ast.walk(tgt) if isinstance(t, ast.Name)}
    return out


def check_notebook(name: str, namespace: dict) -> None:
    """In a notebook, after its parameters (and what papermill injected): ConfigError naming an upper-case name
    its parameters cell does not declare (papermill -p only logs a misspelt name and runs on with the default) or
    a value of another kind than the default's (-p SAMPLE_SIZE abc failed cells later as a bare TypeError).
    A text parameter takes numbers too (papermill reads -p RANKS 8 as an integer)."""
    defaults = parameter_defaults(name)
    injectable = (str, int, float, bool, list, dict, type(None))   # what papermill writes; an import is none of them
    own = assigned_names(name)   # the notebook's own upper-case names (FIG_DIR) exist when a cell is run again
    bad = unknown_parameters(sorted(n for n, v in namespace.items() if n.isupper() and n not in defaults
                                    and n not in own and isinstance(v, injectable)), [name])
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str, int, float)}
    for key, default in defaults.items():
        value = namespace.get(key, default)
        ok = kinds.get(type(default))
        if ok and not (isinstance(value, ok) and (isinstance(value, bool) == isinstance(default, bool)
                                                   or isinstance(default, str) and not isinstance(value, bool))):
            what = {bool: "True or False", int: "an integer", float: "a number", str: "text"}[type(default)]
            bad.append(f"{key}={value!r}: expected {what}, like the default {default!r}")
    if bad:
        raise ConfigError(f"{name}: " + "; ".join(bad) + f" (the parameters cell as saved in notebooks/{name}.ipynb)")


def unknown_parameters(names, notebooks) -> list[str]:
    """Messages for each name that none of ``notebooks`` declares (papermill would only log and ignore it)."""
    known = sorted({p for nb in notebooks for p in notebook_parameters(nb)})
    out = []
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            out.append(f"{name!r} is not a parameter of {', '.join(notebooks)}"
                       + (f" (did you mean {close[0]!r}?)" if close else "")
                       + f"; known: {', '.join(known)}")
    return out


def check_parameters(name: str, params: dict, where: str = "parameter") -> None:
    """ConfigError naming every parameter that the notebook's `parameters` cell does not declare."""
    bad = unknown_parameters(params, [name])
    if bad:
        raise ConfigError(f"{where} " + "; ".join(bad))


# ------------------------------------------------------------------ what data the study runs on

def notebook_tasks(params: dict) -> list[str]:
    """The task names a notebook's parameters select (TASKS, comma-separated, or TASK)."""
    raw = params.get("TASKS", params.get("TASK", ""))
    return [t.strip() for t in str(raw).split(",") if t.strip()]


def data_plan(names: list[str], param_sets: dict[str, dict]) -> dict:
    """Where each task's files come from for these notebooks: ``{"tasks": {task: {split: source}}, "label": ...}``.

    label is "real", "sample" or "real + sample" over the splits that have data; splits without any data are
    listed under "missing" (the notebooks skip them with a visible line).
    """
    from . import data

    tasks = {}
    for name in names:
        for t in notebook_tasks(param_sets[name]):
            if t not in tasks:
                try:
                    tasks[t] = data.availability(t)
                except (KeyError, ValueError):   # an unknown task: the notebook's config cell names it
                    continue
    kinds = {s for splits in tasks.values() for s in splits.values() if not s.startswith("missing")}
    label = " + ".join(sorted(kinds)) if kinds else "none"
    missing = {t: {sp: s.removeprefix("missing: ") for sp, s in splits.items() if s.startswith("missing")}
               for t, splits in tasks.items()}
    hints = {t: data.fetch_hint(t) for t, m in missing.items() if m}
    return {"tasks": tasks, "label": label, "missing": {t: m for t, m in missing.items() if m}, "hints": hints}


def _page_label(plan: dict, tasks: list[str]) -> str:
    kinds = {s for t in tasks for s in plan["tasks"].get(t, {}).values() if not s.startswith("missing")}
    return " + ".join(sorted(kinds)) if kinds else plan["label"]


def data_banner_html(plan: dict, tasks: list[str] | None = None) -> str:
    """A box stating the data source, for the top of every page (red when any of it is the sample set).
    tasks: the page's own tasks ([] for a notebook that reads none); None for the study index."""
    label = _page_label(plan, tasks or [])
    sample = "sample" in label
    color, bg = ("#8b0000", "#ffe4e1") if sample else ("#114411", "#eef7ee")
    lines = [f'<b style="font-size:130%">data: {html.escape(label)}</b>']
    if sample:
        lines.append("The <b>synthetic sample set</b>: template sentences the kit generates itself "
                     "(finlora_utils/data/sample.py), not FinLoRA data. Numbers made from it show the kit works; "
                     "they say nothing about the paper.")
    if tasks is not None and not tasks:
        lines.append("This notebook loads no task data itself; the label is that of the study it belongs to.")
    shown = tasks or list(plan["tasks"])
    per_task = [f"{t}: " + ", ".join(f"{sp} {s.split(':')[0]}" for sp, s in plan["tasks"][t].items())
                for t in shown if t in plan["tasks"]]
    if per_task:
        lines.append("Tasks: " + html.escape("; ".join(per_task)) + ".")
    for t, m in plan["missing"].items():
        if t in shown:
            files = ", ".join(dict.fromkeys(f for v in m.values() for f in v.split(", ")))
            lines.append(html.escape(f"Skipped {t} ({', '.join(m)}): no data ({files}); "
                                     f"to get it: {plan['hints'][t]}."))
    return (f'<div style="border:3px solid {color};background:{bg};color:{color};padding:0.6em 1em;'
            f'margin:0.5em 0 1em 0;font-family:sans-serif">' + "<br>".join(lines) + "</div>")


# ------------------------------------------------------------------ progress: terminal + log file

class Progress:
    """Writes each line to stdout and to a log file (the same text), flushing both at once."""

    def __init__(self, log_path: Path | None, mode: str = "a"):
        self.log_path = log_path
        self._log = None
        if log_path is not None:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_path, mode, encoding="utf-8")
        self._partial = ""

    def line(self, text: str) -> None:
        print(text, flush=True)
        if self._log is not None:
            self._log.write(text + "\n")
            self._log.flush()

    def write(self, text: str) -> None:
        """Kernel stream output: whole lines only, indented; a carriage-return redraw keeps its last state."""
        text = self._partial + text
        *lines, self._partial = text.split("\n")
        for ln in lines:
            ln = ln.rsplit("\r", 1)[-1].rstrip()
            if ln.strip():
                self.line("    " + ln)

    def flush(self) -> None:
        """papermill flushes after every write: a line still being redrawn (a progress bar) must wait."""
        sys.stdout.flush()

    def end_stream(self) -> None:
        """The kernel's output ended (cell or notebook done): show a last unterminated line."""
        if self._partial.strip():
            self.write("\n")
        self._partial = ""

    def close(self) -> None:
        self.end_stream()
        if self._log is not None:
            self._log.close()
            self._log = None


def _register_engine() -> None:
    """A papermill engine that reports each code cell as it starts (papermill's own log is all-or-nothing)."""
    from papermill.engines import NBClientEngine, papermill_engines

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            on_cell = kwargs.pop("on_cell", None)
            if on_cell is not None:
                code = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
                start = nb_man.cell_start

                def cell_start(cell, cell_index=None, **kw):
                    if cell_index in code:
                        on_cell(code.index(cell_index) + 1, len(code))
                    return start(cell, cell_index, **kw)

                nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE, ProgressEngine)


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """os.environ with `values` set inside, as it was after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _kernel_config(sock_dir: str):
    """Kernel over local IPC sockets in a private folder: nothing on the network, and no 'TCP without
    encryption' warning from ipykernel at every launch. TCP where IPC does not exist (Windows)."""
    from traitlets.config import Config

    if os.name != "posix":
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sock_dir, "kernel")}})


def run_notebook(name: str, preset: str = "cpu", output_dir: str | Path | None = None,
                 timeout: int | None = None, extra_params: dict | None = None,
                 progress: Progress | None = None, label: str | None = None) -> Path:
    """Execute notebooks/<name>.ipynb with the preset's parameters; return the executed copy's path.

    The executed notebook goes to <output_dir>/executed/<name>.ipynb; a failing cell raises NotebookFailed
    naming the notebook and the cell's error; a parameter the notebook does not declare raises ConfigError.
    Progress (cells, the package's printed lines) goes to ``progress``, else to stdout and
    <output_dir>/executed/study.log.
    """
    import papermill as pm

    name = name.removesuffix(".ipynb")   # the notebook's name, as presets and output files use it
    src = notebook_path(name)
    out_root = (Path(output_dir) if output_dir else project_root() / "reports").resolve()
    dst = out_root / "executed" / f"{name}.ipynb"
    dst.parent.mkdir(parents=True, exist_ok=True)
    params = load_preset(preset, name)
    params.update(extra_params or {})
    check_parameters(name, params, where=f"{name}:")
    for k, v in params.items():   # own-data files (TRAIN_FILE, TEST_FILE): the kernel runs in notebooks/
        if k.endswith("_FILE") and isinstance(v, str) and v and not Path(v).is_absolute():
            params[k] = str(Path(v).resolve())
    params["OUTPUT_DIR"] = str(out_root)
    env_timeout = os.environ.get("FINLORA_CELL_TIMEOUT")
    if env_timeout and not (env_timeout.strip().isdigit() and int(env_timeout) > 0):
        raise ConfigError(f"FINLORA_CELL_TIMEOUT={env_timeout!r}: expected seconds per notebook cell, an integer > 0")
    from .data.sources import ENV_DATA_DIR

    # The kernel inherits os.environ when it starts; the caller's is put back after the run (datasets reads its
    # variable once, at import, so a leftover would switch a later import's bars off in the calling process).
    kernel_env = {"HF_HUB_DISABLE_PROGRESS_BARS": os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                  "HF_DATASETS_DISABLE_PROGRESS_BARS": os.environ.get("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")}
    if os.environ.get(ENV_DATA_DIR):   # the kernel runs in notebooks/: a relative data dir would move
        kernel_env[ENV_DATA_DIR] = str(Path(os.environ[ENV_DATA_DIR]).resolve())
    own = progress is None
    progress = progress or Progress(dst.parent / LOG_NAME)
    tag = label or name
    progress.line(f"[study] {tag}: running ({preset} preset)")
    if ENGINE not in _registered:
        _register_engine()
        _registered.add(ENGINE)
    def on_cell(k: int, n: int) -> None:
        progress.end_stream()
        progress.line(f"[study] {tag}: cell {k}/{n}")

    t0 = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="finlora-kernel-") as sock_dir, _environ(kernel_env):
            pm.execute_notebook(str(src), str(dst), parameters=params, cwd=str(notebooks_dir()),
                                kernel_name="python3", engine_name=ENGINE, log_output=False, progress_bar=False,
                                stdout_file=progress, stderr_file=progress, config=_kernel_config(sock_dir),
                                on_cell=on_cell,
                                execution_timeout=timeout or (int(env_timeout) if env_timeout else None))
    except pm.PapermillExecutionError as e:
        progress.end_stream()
        progress.line(f"[study] {tag}: FAILED in cell {e.exec_count} after {time.time() - t0:.0f} s")
        raise NotebookFailed(f"{name}.ipynb failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                             f"(executed copy with the traceback: {dst})") from None
    finally:
        if own:
            progress.close()
        else:
            progress.end_stream()
    progress.line(f"[study] {tag}: done in {time.time() - t0:.0f} s -> {dst}")
    return dst


_registered: set[str] = set()


# ------------------------------------------------------------------ rendering

def shareable_text(text: str, out_root: Path) -> str:
    """A report page is read on other machines: this machine's paths in what a notebook printed are shown
    relative to the report folder (results/x.json), else to the checkout (finlora_utils/lora.py:389), the home
    folder as ~."""
    text = re.sub(r"(\x1b\[[0-9;]*m)", "\\1\x00", text)   # a traceback colours its paths: \x1b[32m/home/...
    for root in sorted({str(Path(out_root).resolve()), str(project_root().resolve())}, key=len, reverse=True):
        text = relativize_text(text, root)
    home = str(Path.home()).rstrip("/")
    if len(home) > 1:
        text = re.sub(r"(?<![\w.-])" + re.escape(home) + r"(?=/|(?![\w.-]))", "~", text)
    return text.replace("\x00", "")


def shareable_outputs(nb, out_root: Path) -> None:
    """shareable_text on every printed or displayed text of an executed notebook, in place (images untouched)."""
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if "text" in o:
                o["text"] = shareable_text(o["text"], out_root)
            if "traceback" in o:
                o["traceback"] = [shareable_text(t, out_root) for t in o["traceback"]]
            for kind in ("text/plain", "text/html", "text/markdown"):
                if isinstance(o.get("data", {}).get(kind), str):
                    o["data"][kind] = shareable_text(o["data"][kind], out_root)


def render_html(executed: Path, html_dir: Path, hide_code: bool = True, banner: str = "") -> Path:
    """Render an executed notebook to HTML (the report hides code cells); ``banner`` goes first in the body."""
    import nbformat
    from nbconvert import HTMLExporter

    from .explore import strip_widgets

    nb = nbformat.read(str(executed), as_version=4)
    strip_widgets(nb)   # the report opens offline: no widget JavaScript from a CDN
    shareable_outputs(nb, html_dir.parent)
    exporter = HTMLExporter(exclude_input=hide_code, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    if banner:
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + "\n" + banner, body, count=1)
    return atomic_write_text(html_dir / f"{executed.stem}.html", body)


def write_index(html_dir: Path, pages: list[Path], preset: str, out_root: Path, plan: dict | None = None,
                times: dict[str, float] | None = None) -> Path:
    from .results import environment, git_commit, now_iso

    env = environment()
    times = times or {}
    rows = "\n".join(f'<li><a href="html/{p.name}">{html.escape(p.stem)}</a>'
                     + (f" ({times[p.stem]:.0f} s)" if p.stem in times else "") + "</li>" for p in pages)
    figs = sorted((out_root / "figures").glob("*.png"))
    fig_rows = "\n".join(f'<li><a href="figures/{f.name}">{html.escape(f.stem)}</a> '
                         f'(<a href="figures/{f.stem}.csv">csv</a>)</li>' for f in figs)
    banner = data_banner_html(plan) if plan else ""
    # a capped run's figures are not the uncapped CPU's (README: the AVX2 kind emulated)
    caps = html.escape(hardware.caps_text(env["hardware"].get("isa_caps") or {}))
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>FinLoRA study report</title></head>
<body style="font-family:sans-serif;max-width:900px;margin:2em auto">
<h1>FinLoRA study report</h1>
{banner}
<p>Preset <b>{html.escape(preset)}</b>, generated {now_iso()}, commit {html.escape(str(git_commit()))},
python {env['python']}, torch {env['packages'].get('torch')}, transformers {env['packages'].get('transformers')},
hardware: {html.escape(str(env['hardware']['cpu']))}{caps}, GPUs: {env['hardware']['gpus']}.</p>
<h2>Notebooks</h2><ol>{rows}</ol>
<h2>Figures</h2><ul>{fig_rows}</ul>
<p>Every number comes from <code>results/*.json</code> written by this run.</p>
</body></html>
"""
    return atomic_write_text(out_root / "index.html", doc)


def force_params(name: str, force: bool) -> dict | None:
    """The extra parameters --force means for a notebook: FORCE = True where it declares FORCE, else none."""
    return {"FORCE": True} if force and "FORCE" in notebook_parameters(name) else None


def run_study(preset: str = "cpu", output_dir: str | Path | None = None, notebooks: list[str] | None = None,
              timeout: int | None = None, force: bool = False) -> Path:
    """Run the notebooks in order, render each page and the index. force: FORCE = True in every notebook that
    declares it (a finished run is retrained, e.g. after its data changed)."""
    out_root = (Path(output_dir) if output_dir else project_root() / "reports").resolve()
    names = notebooks or available_notebooks()
    param_sets = {n: load_preset(preset, n) for n in names}
    for n in names:
        check_parameters(n, param_sets[n], where=f"preset {preset}, {n}:")
    progress = Progress(out_root / "executed" / LOG_NAME, mode="w")
    t_all = time.time()
    times, pages = {}, []
    try:
        progress.line("[study] finding the data (FINLORA_DATA_DIR, cache, download unless FINLORA_OFFLINE=1, sample)")
        plan = data_plan(names, param_sets)
        progress.line(f"[study] {len(names)} notebooks, preset {preset}, data: {plan['label']}; "
                      f"log: {progress.log_path}")
        if "sample" in plan["label"]:
            progress.line("[study] data: sample - the kit's SYNTHETIC sample set stands in for missing real data "
                          "(results show the kit works, not FinLoRA's numbers)")
        if plan["missing"]:   # the notebooks that meet them say, once per task, what is missing and how to get it
            progress.line(f"[study] no data at all for {', '.join(plan['missing'])}: skipped "
                          f"(`python -m finlora_utils.data fetch <task>` gets them where the network is reachable)")
        for i, name in enumerate(names, 1):
            t0 = time.time()
            executed = run_notebook(name, preset, out_root, timeout, extra_params=force_params(name, force),
                                    progress=progress,
                                    label=f"{i}/{len(names)} {name}")
            times[name] = time.time() - t0
            tasks = notebook_tasks(param_sets[name])
            pages.append(render_html(executed, out_root / "html", banner=data_banner_html(plan, tasks)))
        index = write_index(out_root / "html", pages, preset, out_root, plan, times)
        progress.line(f"[study] finished {len(names)} notebooks in {time.time() - t_all:.0f} s:")
        for name in names:
            tasks = notebook_tasks(param_sets[name])
            progress.line(f"[study]   {name:16s} {times[name]:6.0f} s   data: {_page_label(plan, tasks)}")
        progress.line(f"[study] report: {index}")
        return index
    finally:
        progress.close()


@cli_entry
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finlora_utils study", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("all", help="run every notebook in order, render HTML and index.html")
    a.add_argument("--notebooks", default=None, help="comma-separated subset to run, in the order given (default: all)")
    r = sub.add_parser("run", help="run one notebook")
    r.add_argument("notebook", help=f"one of {', '.join(NOTEBOOKS)}")
    for p in (a, r):
        p.add_argument("--preset", default="cpu", choices=PRESETS)
        p.add_argument("--output-dir", default=None, help="default: reports/ in the checkout")
        p.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
        p.add_argument("--force", action="store_true", help="retrain finished runs (FORCE = True in the notebooks "
                                                            "that take it); make study FORCE=1")
    args = ap.parse_args(argv)
    if args.cmd == "run":   # 03_finetune.ipynb names the same notebook (and must not run as 03_finetune.ipynb.ipynb)
        args.notebook = args.notebook.removesuffix(".ipynb")
    out_root = Path(args.output_dir or project_root() / "reports").resolve()
    try:
        with folder_lock(out_root, f"python -m finlora_utils.study {args.cmd} --preset {args.preset}"):
            if args.cmd == "all":
                names = None
                if args.notebooks:
                    names = [n.strip().removesuffix(".ipynb") for n in args.notebooks.split(",") if n.strip()]
                    for n in names:
                        notebook_path(n)   # FileNotFoundError naming the available ones
                run_study(args.preset, out_root, names, timeout=args.timeout, force=args.force)
            else:
                extra = force_params(args.notebook, args.force)
                if args.force and extra is None:
                    print(f"[study] {args.notebook} has no FORCE parameter: --force changes nothing there")
                executed = run_notebook(args.notebook, args.preset, out_root, args.timeout, extra_params=extra)
                params = load_preset(args.preset, args.notebook)
                plan = data_plan([args.notebook], {args.notebook: params})
                banner = data_banner_html(plan, notebook_tasks(params))
                print(f"[study] page: {render_html(executed, out_root / 'html', banner=banner)}")
    except NotebookFailed as e:   # the notebook ran and failed: not a usage error
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
