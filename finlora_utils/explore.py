"""Interactive explorers for the notebooks (ipywidgets + matplotlib), each with a static fallback.

With ``INTERACTIVE = True`` in JupyterLab a notebook cell shows controls and the figure / table they drive.
Otherwise (papermill, the HTML report) the same call shows the default view as a plain PNG and HTML table
plus one line saying the view is interactive in JupyterLab, so the report needs no widget JavaScript.

    explore.quantization_explorer(model, layers=[0, 15]).show(INTERACTIVE)     # 01
    explore.fit_explorer("llama-3.1-8b").show(INTERACTIVE)                      # 02
    monitor = explore.TrainingMonitor(run_ids, INTERACTIVE)                     # 03: train(..., on_step=monitor.hook(c))
    explore.prediction_browser(results_dir, model, tasks, predictor).show(INTERACTIVE)   # 05
    explore.results_explorer(runs).show(INTERACTIVE)                            # 06

Every explorer is an :class:`Explorer`: named controls and a ``render(**values) -> (figure, table)``
function; ``Explorer.view(**changes)`` renders without widgets (the tests use it). Widgets carry the CSS
classes ``finlora-explorer`` / ``finlora-control`` / ``finlora-figure`` / ``finlora-table`` that the
browser test (tests/test_lab_browser.py) looks for.
"""
from __future__ import annotations

import html
import io
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

NOTE = "interactive in JupyterLab: set INTERACTIVE = True in the parameters cell (or `make lab`) to change this view"


def fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def table_html(table) -> str:
    if table is None:
        return ""
    if isinstance(table, str):
        return table
    return table.to_html(float_format=lambda x: f"{x:.4g}", border=0)


class Explorer:
    """Controls (name -> ipywidget) driving ``render(**values) -> (matplotlib figure | None, DataFrame | html | None)``.

    ``before(controls)`` runs before each render and may change other controls' options (a filter narrowing
    the examples a dropdown offers); renders it triggers itself are folded into one.
    """

    def __init__(self, title: str, controls: dict, render: Callable, before: Callable | None = None):
        self.title, self.controls, self.render, self.before = title, controls, render, before
        self._busy = False
        self.box = None

    def values(self) -> dict:
        return {k: (tuple(w.value) if isinstance(w.value, (list, tuple)) else w.value) for k, w in self.controls.items()}

    def view(self, **changes) -> tuple[bytes | None, str]:
        """(PNG bytes or None, table HTML) for the current values with `changes` applied to the controls."""
        for k, v in changes.items():
            if k not in self.controls:
                raise ValueError(f"{k}: not a control of {self.title!r}; expected one of {', '.join(self.controls)}")
            self.controls[k].value = v
        if self.before is not None:
            self.before(self.controls)
        fig, table = self.render(**self.values())
        return (fig_png(fig) if fig is not None else None), table_html(table)

    def widget(self):
        import ipywidgets as w

        png, table = self.view()
        image = w.Image(value=png or b"", format="png", layout=w.Layout(display="" if png else "none"))
        image.add_class("finlora-figure")
        out = w.HTML(value=table)
        out.add_class("finlora-table")
        status = w.HTML(value="")

        def update(_change=None):
            if self._busy:
                return
            self._busy = True
            try:
                status.value = "<i>updating…</i>"
                png, table = self.view()
                if png:
                    image.value = png
                image.layout.display = "" if png else "none"
                out.value = table
                status.value = ""
            except Exception as e:   # shown in the cell: an observer's traceback would go to the log console only
                status.value = f"<span style='color:#b00'>{html.escape(type(e).__name__)}: {html.escape(str(e))}</span>"
            finally:
                self._busy = False

        for ctl in self.controls.values():
            ctl.add_class("finlora-control")
            ctl.observe(update, names="value")
        controls = w.HBox(list(self.controls.values()), layout=w.Layout(flex_flow="row wrap"))
        self.box = w.VBox([w.HTML(f"<b>{html.escape(self.title)}</b>"), controls, status, image, out])
        self.box.add_class("finlora-explorer")
        return self.box

    def show(self, interactive: bool = False) -> None:
        from IPython.display import HTML, Image, display

        if interactive:
            display(self.widget())
            return
        png, table = self.view()
        display(HTML(f"<b>{html.escape(self.title)}</b> (default view)"))
        if png:
            display(Image(data=png, format="png"))
        if table:
            display(HTML(table))
        print(NOTE)


class Message:
    """Stands in for an explorer that has nothing to explore here (say, no task with a label set)."""

    def __init__(self, text: str):
        self.text = text

    def show(self, interactive: bool = False) -> None:
        print(self.text)


def _dropdown(options, value=None, description: str = "", width: str = "auto"):
    import ipywidgets as w

    options = list(options)
    return w.Dropdown(options=options, value=options[0] if value is None else value, description=description,
                      style={"description_width": "initial"}, layout=w.Layout(width=width))


def _checkbox(value: bool, description: str):
    import ipywidgets as w

    return w.Checkbox(value=value, description=description, indent=False, layout=w.Layout(width="auto"))


# ------------------------------------------------------------------ 01: one layer's quantization

def normalized_weights(w, fmt: str, blocksize: int):
    """Weights in the units the format's codes live in: w / absmax of its row (int8) or of its block (4-bit)."""
    import torch

    w = w.detach().float()
    if fmt == "int8":
        return (w / w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)).flatten()
    flat = w.flatten()
    pad = (-flat.numel()) % blocksize
    blocks = torch.cat([flat, flat.new_zeros(pad)]).view(-1, blocksize)
    return (blocks / blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)).flatten()[:flat.numel()]


def quantization_explorer(model, layers: Sequence[int] | None = None, seed: int = 0) -> Explorer:
    """Pick a projection and a format (int8 / NF4 / FP4, block size, double quant): the weights in the
    format's units with its code points, the error distribution, and the bytes stored."""
    import matplotlib.pyplot as plt
    import torch

    from . import quant

    weights = dict(quant.projection_weights(model))
    names = [n for n in weights if layers is None or quant.layer_index(n) in set(layers)] or list(weights)
    controls = dict(layer=_dropdown(names, description="projection"),
                    fmt=_dropdown(["int8", "nf4", "fp4"], "nf4", "format"),
                    block=_dropdown(quant.BLOCKSIZES, quant.BLOCK, "4-bit block size"),
                    double_quant=_checkbox(False, "double quantization (4-bit)"))

    def render(layer, fmt, block, double_quant):
        w = weights[layer].detach().float()
        scheme = fmt + ("-dq" if double_quant and fmt != "int8" else "")
        q = quant.quantize(w, scheme, blocksize=block)
        err = quant.weight_error(w, quant.dequantize(q))
        x = normalized_weights(w, fmt, block).numpy()
        e = ((quant.dequantize(q) - w) / w.pow(2).mean().sqrt()).flatten()
        idx = torch.randperm(e.numel(), generator=torch.Generator().manual_seed(seed))[:50_000]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
        axes[0].hist(x, bins=np.linspace(-1, 1, 161), color="tab:blue", alpha=0.8)
        if fmt == "int8":
            axes[0].set_title(f"{layer}: w / row absmax (int8: 255 even levels)", fontsize=8)
        else:
            for c in q.tensors["code"].float().numpy():
                axes[0].axvline(c, color="tab:red", lw=0.8, alpha=0.8)
            axes[0].set_title(f"{layer}: w / block absmax, {fmt} code points (red)", fontsize=8)
        axes[0].set_yscale("log")
        axes[0].set_xlabel("normalized weight")
        axes[1].hist(e[idx].numpy(), bins=120, color="tab:orange")
        axes[1].set_yscale("log")
        axes[1].set_xlabel("(Q(w) - w) / rms(w)")
        axes[1].set_title(f"error of {scheme}, block {block if fmt != 'int8' else 'row'}", fontsize=8)
        fig.tight_layout()
        table = pd.DataFrame([dict(projection=layer, shape="x".join(map(str, w.shape)), scheme=scheme,
                                   block=block if fmt != "int8" else "row", stored_bytes=q.nbytes,
                                   bf16_bytes=2 * w.numel(), bits_per_param=round(q.bits_per_param, 3),
                                   rel_fro=err["rel_fro"], cosine=err["cosine"], err_p99_rms=err["err_p99"])])
        return fig, table.set_index("projection")

    return Explorer("Quantize one projection", controls, render)


# ------------------------------------------------------------------ 02: memory planner, what fits

def _stacked_bars(rows: dict, gpu_gib: float | None = None, title: str = ""):
    """Horizontal stacked bars, one per plan: rows = {label: breakdown bytes}."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.55 * len(rows)))
    parts = list(dict.fromkeys(k for b in rows.values() for k in b))
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(parts), 2)))
    for i, (label, b) in enumerate(rows.items()):
        left = 0.0
        for j, k in enumerate(parts):
            v = b.get(k, 0) / 2**30
            ax.barh(i, v, left=left, color=colors[j], label=k if i == 0 else None)
            left += v
    if gpu_gib:
        ax.axvline(gpu_gib, color="k", ls="--", lw=1, label=f"GPU {gpu_gib:g} GiB")
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel("GiB per GPU")
    ax.set_title(title, fontsize=9)
    ax.legend(ncol=5, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35 - 0.1 / len(rows)))
    return fig


def planner_explorer(model: str = "llama-3.1-8b") -> Explorer:
    """One GPU's predicted peak for bits, rank, sequence length, batch, GPUs, checkpointing, label-only logits."""
    from . import memory

    controls = dict(bits=_dropdown([16, 8, 4], 4, "bits"), rank=_dropdown([1, 2, 4, 8, 16, 32, 64], 8, "rank"),
                    seq_len=_dropdown([128, 256, 512, 1024, 2048, 4096, 8192, 16384], 2048, "seq len"),
                    batch=_dropdown([1, 2, 4, 8, 16, 32], 4, "batch"), gpus=_dropdown([1, 2, 4, 8], 1, "GPUs (DDP)"),
                    checkpointing=_checkbox(True, "checkpointing"), label_only=_checkbox(True, "label-only logits"))

    def render(bits, rank, seq_len, batch, gpus, checkpointing, label_only):
        p = memory.plan(model, bits=bits, rank=rank, seq_len=seq_len, batch=batch, gpus=gpus,
                        parallel="ddp" if gpus > 1 else "none", grad_checkpointing=checkpointing,
                        label_only_logits=label_only, double_quant=bits == 4)
        fig = _stacked_bars({f"{bits}-bit r{rank}": p.breakdown}, None,
                            f"{model}: seq {seq_len} x batch {batch}, total {p.total_gib:.2f} GiB per GPU")
        table = pd.DataFrame([{k: v / 2**30 for k, v in p.breakdown.items()} | {"total": p.total_gib}],
                             index=["GiB per GPU"])
        return fig, table

    return Explorer("Memory planner: where one GPU's bytes go", controls, render)


def fits(model: str, gpu_gib: float, bits: int, rank: int, checkpointing: bool, seq_len: int, batch: int) -> dict:
    """Longest sequence at `batch` and largest batch at `seq_len` on one GPU, with each plan's breakdown
    (the kit's defaults: label-only logits, double quantization at 4 bits)."""
    from . import memory

    kw = dict(bits=bits, rank=rank, grad_checkpointing=checkpointing, label_only_logits=True, double_quant=bits == 4)
    longest = memory.max_seq_len_that_fits(gpu_gib, model, batch=batch, **kw)
    largest = memory.max_batch_that_fits(gpu_gib, model, seq_len=seq_len, **kw)
    return dict(longest_seq=longest, largest_batch=largest,
                plan_seq=memory.plan(model, seq_len=max(longest, 16), batch=batch, **kw),
                plan_batch=memory.plan(model, seq_len=seq_len, batch=max(largest, 1), **kw))


def fit_explorer(model: str = "llama-3.1-8b") -> Explorer:
    """What fits on my GPU: model, GPU size, bits, rank, checkpointing -> longest sequence and largest batch."""
    from . import lora

    models = lora.shipped_models()
    controls = dict(model=_dropdown(models, model if model in models else None, "model"),
                    gpu_gib=_dropdown([8, 12, 16, 24, 32, 40, 48, 80, 96, 141], 24, "GPU GiB"),
                    bits=_dropdown([16, 8, 4], 4, "bits"), rank=_dropdown([1, 2, 4, 8, 16, 32, 64], 4, "rank"),
                    checkpointing=_checkbox(True, "checkpointing"),
                    seq_len=_dropdown([256, 512, 1024, 2048, 4096, 8192, 16384], 2048, "seq len (for batch)"),
                    batch=_dropdown([1, 2, 4, 8, 16, 32], 4, "batch (for seq len)"))

    def render(model, gpu_gib, bits, rank, checkpointing, seq_len, batch):
        f = fits(model, gpu_gib, bits, rank, checkpointing, seq_len, batch)
        a = f"longest seq {f['longest_seq']} x batch {batch}" if f["longest_seq"] else f"seq 16 x batch {batch}: does not fit"
        b = f"largest batch {f['largest_batch']} x seq {seq_len}" if f["largest_batch"] else f"batch 1 x seq {seq_len}: does not fit"
        fig = _stacked_bars({a: f["plan_seq"].breakdown, b: f["plan_batch"].breakdown}, gpu_gib,
                            f"{model}, {bits}-bit r{rank}, checkpointing {'on' if checkpointing else 'off'}, "
                            f"on a {gpu_gib} GiB GPU")
        rows = [dict(question=f"longest sequence at batch {batch}", answer=f["longest_seq"], plan_total_GiB=f["plan_seq"].total_gib,
                     **{k: v / 2**30 for k, v in f["plan_seq"].breakdown.items()}),
                dict(question=f"largest batch at seq {seq_len}", answer=f["largest_batch"], plan_total_GiB=f["plan_batch"].total_gib,
                     **{k: v / 2**30 for k, v in f["plan_batch"].breakdown.items()})]
        return fig, pd.DataFrame(rows).set_index("question").T   # one column per question reads down

    return Explorer("What fits on my GPU?", controls, render)


# ------------------------------------------------------------------ 03: training you can watch

class TrainingMonitor:
    """A live loss curve and progress bar while ``train.train`` runs (``on_step=monitor.hook(config)``).

    Not interactive: hook() returns None and the training cell prints its usual text lines only.
    """

    def __init__(self, run_ids: Sequence[str], interactive: bool = False, redraw_s: float = 0.5):
        self.run_ids, self.interactive, self.redraw_s = list(run_ids), interactive, redraw_s
        self.curves: dict[str, list] = {}
        self._last = 0.0
        if not interactive:
            print(f"live progress bar and loss curve: {NOTE}; the training cell prints progress lines")
            return
        import ipywidgets as w
        from IPython.display import display

        self.bar = w.IntProgress(value=0, min=0, max=1, description="waiting", style={"description_width": "initial"},
                                 layout=w.Layout(width="60%"))
        self.label = w.Label(value=f"{len(self.run_ids)} run(s) to train")
        self.image = w.Image(format="png", layout=w.Layout(display="none"))
        self.bar.add_class("finlora-progress")
        self.image.add_class("finlora-figure")
        box = w.VBox([w.HBox([self.bar, self.label]), self.image])
        box.add_class("finlora-monitor")
        display(box)

    def hook(self, config):
        """The on_step callback for one run (None when not interactive)."""
        return _RunHook(self, config.run_id()) if self.interactive else None

    def _draw(self):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3))
        for run_id, pts in self.curves.items():
            if pts:
                s, l = zip(*pts)
                ax.plot(s, l, label=run_id)
        ax.set(xlabel="optimizer step", ylabel="loss on answer tokens", title="Training loss (live)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        self.image.value = fig_png(fig)
        self.image.layout.display = ""
        self._last = time.time()


class _RunHook:
    def __init__(self, monitor: TrainingMonitor, run_id: str):
        self.m, self.run_id = monitor, run_id
        monitor.curves.setdefault(run_id, [])

    def begin(self, total: int, start: int) -> None:
        m = self.m
        m.bar.max, m.bar.value = max(total, 1), start
        n = m.run_ids.index(self.run_id) + 1 if self.run_id in m.run_ids else "?"
        m.bar.description = f"run {n}/{len(m.run_ids)}: {self.run_id}"
        m.label.value = f"step {start}/{total}"

    def __call__(self, step: int, loss: float) -> None:
        m = self.m
        m.curves[self.run_id].append((step, loss))
        m.bar.value = step
        m.label.value = f"step {step}/{m.bar.max}  loss {loss:.4f}"
        if step >= m.bar.max or time.time() - m._last >= m.redraw_s:
            m._draw()


def loss_explorer(runs: Sequence[dict]) -> Explorer | Message:
    """Loss curves of finished runs: choose runs and the smoothing window."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    curves = {r["run_id"]: r["train_info"]["loss_curve"] for r in runs if (r.get("train_info") or {}).get("loss_curve")}
    if not curves:
        return Message("loss explorer: no training loss curves (train_info.loss_curve) to explore")
    ids = list(curves)
    controls = dict(runs=w.SelectMultiple(options=ids, value=tuple(ids), description="runs",
                                          rows=min(len(ids), 6), layout=w.Layout(width="auto")),
                    smooth=_dropdown([1, 3, 5, 10, 20], 5, "smoothing (steps)"))

    def render(runs, smooth):
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        rows = []
        for run_id in runs:
            d = pd.DataFrame(curves[run_id], columns=["step", "loss"])
            ax.plot(d.step, d.loss.rolling(smooth, min_periods=1).mean(), label=run_id)
            rows.append(dict(run_id=run_id, steps=len(d), first=d.loss.iloc[0], last=d.loss.iloc[-1], min=d.loss.min(),
                             last_smoothed=d.loss.rolling(smooth, min_periods=1).mean().iloc[-1]))
        ax.set(xlabel="optimizer step", ylabel=f"loss ({smooth}-step mean)", title="Training loss")
        ax.grid(alpha=0.3)
        if runs:
            ax.legend(fontsize=7)
        return fig, pd.DataFrame(rows, columns=["run_id", "steps", "first", "last", "min", "last_smoothed"])

    return Explorer("Loss curves", controls, render)


# ------------------------------------------------------------------ 05: predictions, and a sentence box

def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class Predictor:
    """The base model and each finetuned adapter, loaded once, scoring a prompt's labels with the evaluation
    code (``evaluate.score_labels``: log P(label | prompt), here turned into probabilities over the labels)."""

    def __init__(self, model: str, run_paths: Sequence[str | Path] = (), base_precision: str = "auto"):
        self.model, self.run_paths, self.base_precision = model, list(run_paths), base_precision
        self._entries: list | None = None   # loaded on first use: a notebook without label tasks never pays for it

    @property
    def entries(self) -> list[tuple[str, object, object, str | None]]:
        """(label, model, tokenizer, adapter name or None for the base), the base first."""
        if self._entries is None:
            self._entries = self._load()
        return self._entries

    def _load(self) -> list:
        from peft import PeftModel

        from .artifacts import safetensors_adapter
        from .config import resolve_precision
        from .evaluate import run_adapter_dir
        from .models import contiguous_head, fix_bnb_cpu, load_model
        from .report import config_label
        from .results import read_result

        entries = []
        groups: dict[str, list] = {}
        for p in self.run_paths:
            r = read_result(p, require=("run_id", "run_info.config.precision", "train_info.adapter_path"))
            r["_adapter_dir"] = str(run_adapter_dir(p))   # stored relative to the checkout; the kernel runs elsewhere
            groups.setdefault(r["run_info"]["config"]["precision"], []).append(r)
        base_precision = resolve_precision(self.base_precision)
        groups.setdefault(base_precision, [])
        for prec, runs in groups.items():
            base, tok = load_model(self.model, precision=prec)
            fix_bnb_cpu(base)      # a no-grad 4-bit forward on CPU needs it (see evaluate.evaluate)
            contiguous_head(base)
            peft = None
            for r in runs:
                name, adir = r["run_id"], safetensors_adapter(r["_adapter_dir"])
                if peft is None:
                    peft = PeftModel.from_pretrained(base, adir, adapter_name=name, is_trainable=False)
                else:
                    peft.load_adapter(adir, adapter_name=name, is_trainable=False)
                entries.append((config_label(r), peft, tok, name))
            if prec == base_precision:
                entries.insert(0, (f"base ({prec})", peft or base, tok, None))
        for _, m, _, _ in entries:
            m.eval()
        return entries

    @property
    def labels(self) -> list[str]:
        return [e[0] for e in self.entries]

    def probabilities(self, prompt: str, labels: Sequence[str]) -> pd.DataFrame:
        """Rows: each configuration; columns: P(label) over the task's labels, and the answer."""
        import contextlib

        from peft import PeftModel

        from .scoring import score_labels

        rows = []
        for name, model, tok, adapter in self.entries:
            if adapter is None:
                ctx = model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()
            else:
                model.set_adapter(adapter)
                ctx = contextlib.nullcontext()
            with ctx:
                p = _softmax(score_labels(model, tok, [prompt], labels, batch_size=1)[0])
            rows.append(dict(configuration=name, answer=labels[int(p.argmax())], **dict(zip(labels, p))))
        return pd.DataFrame(rows).set_index("configuration")


def stored_predictions(results_dir: str | Path, model: str, task: str) -> tuple[pd.DataFrame, str]:
    """The test examples of `task` one evaluation sample saw, with every stored prediction beside them.

    Columns: prompt, gold, then one column per '<configuration> · <mode>' from results/*.json. Entries made
    on another test sample than the first one found are left out (they do not line up); the note says so."""
    from . import data, report

    runs = [r for r in report.load(results_dir) if r["run_info"]["config"].get("model") == model
            and task in (r.get("eval_info") or {})]
    cols, sample, skipped = {}, None, []
    for r in runs:
        entry = r["eval_info"][task]
        s = entry.get("test_sample")
        if s is None or entry.get("kind", "classification") != "classification":
            continue
        sample = sample or s
        if s != sample:
            skipped.append(r["run_id"])
            continue
        for mode, m in (entry.get("modes") or {}).items():
            if m.get("predictions") is not None:
                cols[f"{report.config_label(r)} · {mode}" + (f" · {entry.get('precision')}" if not report.is_trained(r) else "")] = m["predictions"]
    if sample is None:
        return pd.DataFrame(columns=["prompt", "gold"]), f"no stored predictions for {task} in {results_dir}"
    ds = data.load_task(task, split="test", **sample)
    n = min(len(ds), *(len(v) for v in cols.values())) if cols else len(ds)
    labels = data.get_task(task).labels or ()
    df = pd.DataFrame(dict(prompt=ds["context"][:n],
                           gold=[data.normalize_label(task, t) or t for t in ds["target"][:n]]))
    for k, v in cols.items():
        df[k] = v[:n]
    note = f"{n} test examples (sample {sample}), {len(cols)} stored prediction columns, labels {', '.join(labels)}"
    if skipped:
        note += f"; left out (another test sample): {', '.join(skipped)}"
    return df, note


ANY = "(any)"


def prediction_browser(results_dir: str | Path, model: str, tasks: Sequence[str], predictor: Predictor | None = None,
                       ) -> Explorer | Message:
    """Filter a task's test examples by true and predicted label; read the prompt, what each configuration
    answered (stored predictions) and, with a predictor, each configuration's label probabilities."""
    import ipywidgets as w

    from . import data

    tasks = [t for t in tasks if data.get_task(t).labels]
    if not tasks:
        return Message("prediction browser: no task with a label set among the evaluated tasks; nothing to browse")
    cache: dict = {}

    def table_for(task):
        if task not in cache:
            cache[task] = stored_predictions(results_dir, model, task)
        return cache[task]

    df0, _ = table_for(tasks[0])
    configs0 = [c for c in df0.columns if c not in ("prompt", "gold")] or [ANY]
    labels0 = list(data.get_task(tasks[0]).labels)
    controls = dict(task=_dropdown(tasks, description="task"),
                    gold=_dropdown([ANY] + labels0, description="true label"),
                    by=_dropdown(configs0, description="predicted by", width="22em"),
                    pred=_dropdown([ANY] + labels0 + ["unparseable"], description="predicted label"),
                    example=w.Dropdown(options=[], description="example", layout=w.Layout(width="30em"),
                                       style={"description_width": "initial"}))
    state = {"task": None}

    def matching(df, gold, by, pred):
        keep = pd.Series(True, index=df.index)
        if gold != ANY:
            keep &= df.gold == gold
        if pred != ANY and by in df.columns:
            keep &= df[by] == pred
        return df[keep]

    def before(c):
        task = c["task"].value
        df, _ = table_for(task)
        if state["task"] != task:   # another task: its labels and configurations
            state["task"] = task
            labels = list(data.get_task(task).labels)
            configs = [k for k in df.columns if k not in ("prompt", "gold")] or [ANY]
            c["gold"].options, c["gold"].value = [ANY] + labels, ANY
            c["pred"].options, c["pred"].value = [ANY] + labels + ["unparseable"], ANY
            c["by"].options = configs
            c["by"].value = configs[0]
        sub = matching(df, c["gold"].value, c["by"].value, c["pred"].value)
        opts = [(f"#{i}: {data.split_prompt(p)[1][:70] if p.startswith('Instruction') else p[:70]}", i)
                for i, p in zip(sub.index, sub.prompt)]
        keep = c["example"].value if c["example"].value in sub.index else (opts[0][1] if opts else None)
        c["example"].options = opts
        c["example"].value = keep

    def render(task, gold, by, pred, example):
        df, note = table_for(task)
        sub = matching(df, gold, by, pred)
        head = (f"<p>{len(sub)} of {len(df)} examples with true label <b>{html.escape(gold)}</b> and "
                f"<b>{html.escape(pred)}</b> predicted by <b>{html.escape(by)}</b>. "
                f"<small>{html.escape(note)}</small></p>")
        if example is None or example not in df.index:
            return None, head + "<p><i>no example matches these filters</i></p>"
        row = df.loc[example]
        answers = pd.DataFrame({"answer": row.drop(["prompt", "gold"])})
        answers["correct"] = answers.answer == row.gold
        body = (f"<p><b>example #{example}</b>, true label <b>{html.escape(str(row.gold))}</b></p>"
                f"<pre style='white-space:pre-wrap;max-height:12em;overflow:auto'>{html.escape(row.prompt)}</pre>"
                f"<p>Stored answers (results JSONs):</p>{table_html(answers)}")
        fig = None
        if predictor is not None:
            probs = predictor.probabilities(row.prompt, list(data.get_task(task).labels))
            body += f"<p>Label probabilities now (score protocol, softmax over the labels):</p>{table_html(probs)}"
            fig = _prob_figure(probs, f"#{example}: P(label) per configuration")
        return fig, head + body

    return Explorer("Prediction browser", controls, render, before)


def _prob_figure(probs: pd.DataFrame, title: str):
    import matplotlib.pyplot as plt

    labels = [c for c in probs.columns if c != "answer"]
    fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.45 * len(probs)))
    left = np.zeros(len(probs))
    for lab in labels:
        ax.barh(range(len(probs)), probs[lab], left=left, label=lab)
        left += probs[lab].to_numpy()
    ax.set_yticks(range(len(probs)), probs.index)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    ax.set_title(title, fontsize=9)
    ax.legend(ncol=len(labels), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3 - 0.2 / len(probs)))
    return fig


DEFAULT_SENTENCE = "Net sales rose 12% to EUR 4.1 million, ahead of analysts' expectations."


def sentence_box(predictor: Predictor, tasks: Sequence[str], sentence: str = DEFAULT_SENTENCE) -> Explorer | Message:
    """Type a sentence: each configuration's label and probabilities under the task's instruction."""
    import ipywidgets as w

    from . import data

    tasks = [t for t in tasks if data.get_task(t).labels]
    if not tasks:
        return Message("sentence box: no task with a label set among the evaluated tasks")
    controls = dict(task=_dropdown(tasks, description="task"),
                    sentence=w.Text(value=sentence, description="sentence", continuous_update=False,
                                    style={"description_width": "initial"}, layout=w.Layout(width="44em")))

    def render(task, sentence):
        if not sentence.strip():
            return None, "<p><i>type a sentence</i></p>"
        instruction, _ = data.split_prompt(data.load_task(task, split="test", max_samples=1)["context"][0])
        probs = predictor.probabilities(data.format_prompt(instruction, sentence.strip()), list(data.get_task(task).labels))
        return (_prob_figure(probs, f"{task}: {sentence.strip()[:70]}"),
                f"<p>{html.escape(task)}: <i>{html.escape(sentence.strip())}</i></p>{table_html(probs)}")

    return Explorer("Type a sentence", controls, render)


# ------------------------------------------------------------------ 06: results explorer

METRICS = ("accuracy", "f1_weighted", "f1_macro", "exact_match", "token_f1")


def results_explorer(runs: Sequence[dict]) -> Explorer | Message:
    """Choose a task, a metric and configurations over results/*.json: the table and bar chart redraw."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    from . import report

    ev = report.eval_table(runs)
    if ev.empty:
        return Message("results explorer: no evaluated results (eval_info) yet; run 05_evaluation first")
    ev = ev[ev["own_task"]]
    tasks = sorted(ev.task.unique())
    metrics = [m for m in METRICS if m in ev.columns and ev[m].notna().any()]
    configs = list(dict.fromkeys(ev.config))
    controls = dict(task=_dropdown(tasks, description="task"), metric=_dropdown(metrics, description="metric"),
                    configs=w.SelectMultiple(options=configs, value=tuple(configs), description="configurations",
                                             rows=min(len(configs), 6), style={"description_width": "initial"}))

    def render(task, metric, configs):
        d = ev[(ev.task == task) & ev.config.isin(configs)]
        table = d.pivot_table(index="config", columns="mode", values=metric, aggfunc="max")
        table = table.reindex([c for c in configs if c in table.index])
        fig, ax = plt.subplots(figsize=(7.5, 3.3))
        if len(table):
            table.plot.bar(ax=ax, rot=15)
            maj = d["majority_baseline"].dropna()
            if metric == "accuracy" and len(maj):
                ax.axhline(maj.iloc[0], color="k", ls="--", lw=1, label="majority")
            ax.legend(fontsize=7)
        ax.set(ylabel=metric, title=f"{task}: {metric} by configuration and protocol")
        ax.set_ylim(0, 1)
        return fig, f"<p>{html.escape(task)} · {html.escape(metric)}</p>" + table_html(table)

    return Explorer("Results explorer", controls, render)


# ------------------------------------------------------------------ the HTML report

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def strip_widgets(nb) -> int:
    """Remove widget outputs and the stored widget state from an executed notebook (in place); returns how
    many outputs went. The report opens offline: without the state nbconvert adds no widget JavaScript from
    a CDN, and a finished progress bar or an explorer's controls would only render as their Python repr.
    The explorers' static default views are plain PNG/HTML outputs and stay."""
    nb.metadata.pop("widgets", None)
    removed = 0
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        keep = [o for o in cell.outputs if WIDGET_MIME not in o.get("data", {})]
        removed += len(cell.outputs) - len(keep)
        cell.outputs = keep
    return removed
