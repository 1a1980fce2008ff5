"""finlora_utils.explore without a browser: each control changes what it drives, the numbers are the kit's
own (quant, memory, train), the static fallback, the report's widget stripping, INTERACTIVE = True in nbclient.
The browser test (test_lab_browser.py) drives the same explorers in JupyterLab."""
from __future__ import annotations

import nbformat
import pytest
import torch
from IPython.utils.capture import capture_output

from finlora_utils import explore, memory, quant, study, train
from finlora_utils.config import TrainConfig
from finlora_utils.models import load_model


@pytest.fixture(scope="module")
def tiny():
    model, _ = load_model("tiny-random-llama", "fp32")
    return model


def _changes(ex, values: dict):
    """Each control set to another value, in turn: every one must change the PNG or the table."""
    before = ex.view()
    for name, value in values.items():
        after = ex.view(**{name: value})
        assert after != before, f"{ex.title}: changing {name} to {value!r} changed neither figure nor table"
        before = after


def test_quantization_explorer_controls_and_bytes(tiny):
    ex = explore.quantization_explorer(tiny, layers=[1])
    assert all(".layers.1." in n for n in ex.controls["layer"].options)
    _changes(ex, dict(layer=ex.controls["layer"].options[-1], fmt="fp4", block=256, double_quant=True))
    name = ex.controls["layer"].value
    w = dict(quant.projection_weights(tiny))[name]
    assert f"<td>{quant.quantize(w, 'fp4-dq', blocksize=256).nbytes}</td>" in ex.view()[1]
    # larger blocks store fewer absmax constants
    assert quant.quantize(w, "nf4", blocksize=256).nbytes < quant.quantize(w, "nf4", blocksize=64).nbytes
    with pytest.raises(ValueError, match="blocksize=100"):
        quant.quantize(w, "nf4", blocksize=100)


def test_normalized_weights_lie_in_the_codes_range():
    w = torch.randn(64, 96)
    for fmt, block in (("int8", 64), ("nf4", 64), ("nf4", 4096)):
        x = explore.normalized_weights(w, fmt, block)
        assert x.numel() == w.numel() and x.abs().max() <= 1 + 1e-6 and x.abs().max() > 0.999


def test_fit_explorer_answers_what_the_planner_answers():
    f = explore.fits("llama-3.1-8b", 24, bits=4, rank=4, checkpointing=True, seq_len=2048, batch=4)
    kw = dict(bits=4, rank=4, grad_checkpointing=True, label_only_logits=True, double_quant=True)
    assert f["longest_seq"] == memory.max_seq_len_that_fits(24, "llama-3.1-8b", batch=4, **kw) > 0
    assert f["largest_batch"] == memory.max_batch_that_fits(24, "llama-3.1-8b", seq_len=2048, **kw) > 0
    assert f["plan_seq"].total_gib <= 24 < memory.plan("llama-3.1-8b", seq_len=f["longest_seq"] + 1, batch=4, **kw).total_gib
    ex = explore.fit_explorer("llama-3.1-8b")
    assert str(f["longest_seq"]) in ex.view()[1]
    _changes(ex, dict(gpu_gib=80, bits=16, rank=16, checkpointing=False, seq_len=512, batch=8, model="llama-3.1-70b"
                      if "llama-3.1-70b" in ex.controls["model"].options else ex.controls["model"].options[0]))


def test_static_view_says_it_is_interactive_in_jupyterlab(monkeypatch, capsys):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    explore.planner_explorer().show(False)
    assert explore.NOTE in capsys.readouterr().out
    kinds = [type(o).__name__ for o in shown]
    assert kinds == ["HTML", "Image", "HTML"], kinds   # title, the default view's PNG and its table: no widget
    shown.clear()
    ex = explore.planner_explorer()
    ex.show(True)
    assert shown == [ex.box] and "finlora-explorer" in ex.box._dom_classes
    assert explore.NOTE not in capsys.readouterr().out


def test_training_monitor_follows_a_run(tmp_path):
    cfg = TrainConfig(model="tiny-random-llama", tasks="fpb", precision="fp32", max_train_samples=8, batch_size=4,
                      max_steps=3, output_dir=str(tmp_path / "runs"), log_every=100)
    quiet = explore.TrainingMonitor([cfg.run_id()], interactive=False)
    assert quiet.hook(cfg) is None
    with capture_output():
        mon = explore.TrainingMonitor([cfg.run_id()], interactive=True, redraw_s=0.0)
    res = train.train(cfg, results_dir=tmp_path / "results", log=lambda *_: None, on_step=mon.hook(cfg))
    assert (mon.bar.value, mon.bar.max) == (3, 3)
    assert [s for s, _ in mon.curves[cfg.run_id()]] == [1, 2, 3]
    assert [round(l, 6) for _, l in mon.curves[cfg.run_id()]] == [l for _, l in res["train_info"]["loss_curve"]]
    assert mon.image.value[:4] == b"\x89PNG"
    ex = explore.loss_explorer([res])
    _changes(ex, dict(smooth=1))


def test_strip_widgets_leaves_static_views_and_no_cdn(tmp_path):
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("display_data", data={explore.WIDGET_MIME: {"model_id": "a"}, "text/plain": "HBox()"}),
                    nbformat.v4.new_output("display_data", data={"text/html": "<p>static view</p>"})]
    nb.cells.append(cell)
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    assert "unpkg.com" in HTMLExporter().from_notebook_node(nb)[0]
    assert explore.strip_widgets(nb) == 1
    html = HTMLExporter().from_notebook_node(nb)[0]
    assert "unpkg.com" not in html and "static view" in html and "HBox()" not in html


@pytest.mark.slow
def test_interactive_notebook_runs_in_plain_nbclient(tmp_path):
    """INTERACTIVE = True without a browser (papermill/nbclient): no hang, no error, widgets in the outputs. ~30 s."""
    out = study.run_notebook("02_lora_setup", "smoke", tmp_path, timeout=300, extra_params={"INTERACTIVE": True})
    nb = nbformat.read(str(out), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "explore." in c.source]
    assert len(cells) == 2
    for c in cells:
        assert any(explore.WIDGET_MIME in o.get("data", {}) for o in c.outputs), c.source
        assert not any(o.output_type == "error" for o in c.outputs)
