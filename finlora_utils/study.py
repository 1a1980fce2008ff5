"""Run the study notebooks through papermill with a preset, render HTML and an index.

    python -m finlora_utils.study all --preset cpu        # what `make study` runs
    python -m finlora_utils.study run 03_finetune --preset smoke
"""
from __future__ import annotations

import argparse
import html
import os
import sys
import time
from pathlib import Path

from .config import PRESETS, load_preset
from .paths import project_root
from .results import atomic_write_text

NOTEBOOKS = ("00_data", "01_quantization", "02_lora_setup", "03_finetune", "04_parallel",
             "05_evaluation", "06_report")


class NotebookFailed(RuntimeError):
    pass


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def available_notebooks() -> list[str]:
    """The study's notebooks that exist in this checkout, in study order."""
    return [n for n in NOTEBOOKS if (notebooks_dir() / f"{n}.ipynb").exists()]


def run_notebook(name: str, preset: str = "cpu", output_dir: str | Path | None = None,
                 timeout: int | None = None, extra_params: dict | None = None) -> Path:
    """Execute notebooks/<name>.ipynb with the preset's parameters; return the executed copy's path.

    The executed notebook goes to <output_dir>/executed/<name>.ipynb; a failing cell raises
    NotebookFailed naming the notebook and the cell's error.
    """
    import papermill as pm

    src = notebooks_dir() / f"{name}.ipynb"
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such notebook; available: {', '.join(available_notebooks())}")
    out_root = Path(output_dir) if output_dir else project_root() / "reports"
    out_root = out_root.resolve()
    dst = out_root / "executed" / f"{name}.ipynb"
    dst.parent.mkdir(parents=True, exist_ok=True)
    params = load_preset(preset, name)
    params["OUTPUT_DIR"] = str(out_root)
    params.update(extra_params or {})
    env_timeout = os.environ.get("FINLORA_CELL_TIMEOUT")
    from .data.sources import ENV_DATA_DIR

    if os.environ.get(ENV_DATA_DIR):   # the kernel runs in notebooks/: a relative data dir would move
        os.environ[ENV_DATA_DIR] = str(Path(os.environ[ENV_DATA_DIR]).resolve())
    t0 = time.time()
    try:
        pm.execute_notebook(str(src), str(dst), parameters=params, cwd=str(notebooks_dir()),
                            kernel_name="python3", log_output=True, progress_bar=False,
                            execution_timeout=timeout or (int(env_timeout) if env_timeout else None))
    except pm.PapermillExecutionError as e:
        raise NotebookFailed(f"{name}.ipynb failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                             f"(executed copy with the traceback: {dst})") from None
    print(f"[study] {name} ({preset}) done in {time.time() - t0:.0f} s -> {dst}", flush=True)
    return dst


def render_html(executed: Path, html_dir: Path, hide_code: bool = True) -> Path:
    """Render an executed notebook to HTML; the report rendering hides code cells."""
    import nbformat
    from nbconvert import HTMLExporter

    from .explore import strip_widgets

    nb = nbformat.read(str(executed), as_version=4)
    strip_widgets(nb)   # the report opens offline: no widget JavaScript from a CDN
    exporter = HTMLExporter(exclude_input=hide_code, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    return atomic_write_text(html_dir / f"{executed.stem}.html", body)


def write_index(html_dir: Path, pages: list[Path], preset: str, out_root: Path) -> Path:
    from .results import environment, git_commit, now_iso

    env = environment()
    rows = "\n".join(f'<li><a href="html/{p.name}">{html.escape(p.stem)}</a></li>' for p in pages)
    figs = sorted((out_root / "figures").glob("*.png"))
    fig_rows = "\n".join(f'<li><a href="figures/{f.name}">{html.escape(f.stem)}</a> '
                         f'(<a href="figures/{f.stem}.csv">csv</a>)</li>' for f in figs)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>FinLoRA study report</title></head>
<body style="font-family:sans-serif;max-width:900px;margin:2em auto">
<h1>FinLoRA study report</h1>
<p>Preset <b>{html.escape(preset)}</b>, generated {now_iso()}, commit {html.escape(str(git_commit()))},
python {env['python']}, torch {env['packages'].get('torch')}, transformers {env['packages'].get('transformers')},
hardware: {html.escape(str(env['hardware']['cpu']))}, GPUs: {env['hardware']['gpus']}.</p>
<h2>Notebooks</h2><ol>{rows}</ol>
<h2>Figures</h2><ul>{fig_rows}</ul>
<p>Every number comes from <code>results/*.json</code> written by this run.</p>
</body></html>
"""
    return atomic_write_text(out_root / "index.html", doc)


def run_study(preset: str = "cpu", output_dir: str | Path | None = None, notebooks: list[str] | None = None,
              timeout: int | None = None) -> Path:
    out_root = (Path(output_dir) if output_dir else project_root() / "reports").resolve()
    names = notebooks or available_notebooks()
    pages = []
    for name in names:
        executed = run_notebook(name, preset, out_root, timeout)
        pages.append(render_html(executed, out_root / "html"))
    return write_index(out_root / "html", pages, preset, out_root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finlora_utils.study", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("all", help="run every notebook in order, render HTML and index.html")
    r = sub.add_parser("run", help="run one notebook")
    r.add_argument("notebook", help=f"one of {', '.join(NOTEBOOKS)}")
    for p in (a, r):
        p.add_argument("--preset", default="cpu", choices=PRESETS)
        p.add_argument("--output-dir", default=None, help="default: reports/ in the checkout")
        p.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "all":
            index = run_study(args.preset, args.output_dir, timeout=args.timeout)
            print(f"[study] report: {index}")
        else:
            executed = run_notebook(args.notebook, args.preset, args.output_dir, args.timeout)
            out_root = Path(args.output_dir or project_root() / "reports").resolve()
            render_html(executed, out_root / "html")
    except (NotebookFailed, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
