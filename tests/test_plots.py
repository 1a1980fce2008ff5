"""The notebook figures in plots.py draw the numbers of the frame they are given (what the CSV beside them holds)."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from finlora_utils import plots  # noqa: E402


def heights(ax):
    return [p.get_height() for p in ax.patches]


def test_storage_bits_bars_and_theory_ticks():
    storage = pd.DataFrame(dict(scheme=["bf16", "nf4"], proj_bits_per_param=[16.0, 4.52],
                                model_bits_per_param=[16.0, 7.1], theory_bits_per_param=[16.0, 4.5]))
    ax = plots.storage_bits(storage, "t").axes[0]
    assert heights(ax) == [16.0, 4.52, 16.0, 7.1]
    assert ax.collections[0].get_offsets()[:, 1].tolist() == [16.0, 4.5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bf16", "nf4"] and ax.get_title() == "t"


def test_layer_errors_left_panel_is_the_mean_per_module():
    errs = pd.DataFrame(dict(module=["q_proj", "q_proj", "k_proj", "k_proj"], scheme=["nf4"] * 4,
                             rel_fro=[0.1, 0.3, 0.2, 0.2], cosine=[0.99, 0.98, 0.97, 0.99]))
    fig = plots.layer_errors(errs, "layers 0")
    left = fig.axes[0]
    assert heights(left) == pytest.approx([0.2, 0.2])   # k_proj, q_proj (pivot sorts)
    assert [t.get_text() for t in left.get_xticklabels()] == ["k_proj", "q_proj"]
    assert fig.texts[-1].get_text() == "layers 0"


def test_error_distribution_one_step_line_per_scheme():
    hist = pd.DataFrame(dict(bin_center=[-0.5, 0.5], int8=[0.1, 0.9], nf4=[0.4, 0.6]))
    ax = plots.error_distribution(hist, "e").axes[0]
    assert [ln.get_label() for ln in ax.lines] == ["int8", "nf4"]
    assert ax.lines[1].get_ydata().tolist() == [0.4, 0.6] and ax.get_yscale() == "log"


def test_source_vs_continuous_pairs_the_two_errors():
    summary = pd.DataFrame(dict(scheme=["int8", "nf4"], rel_fro_source=[0.01, 0.1], rel_fro_continuous=[0.02, 0.12]))
    ax = plots.source_vs_continuous(summary, "s", source_label="on m").axes[0]
    assert heights(ax) == [0.01, 0.1, 0.02, 0.12]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["on m", "on the continuous reference"]


def test_zero_shot_bars_errors_and_majority_lines():
    zero = pd.DataFrame(dict(precision=["fp32", "nf4", "fp32", "nf4"], task=["fpb", "fpb", "tfns", "tfns"],
                             n=[20] * 4, accuracy=[0.6, 0.5, 0.7, 0.4], majority=[0.55, 0.55, 0.65, 0.65]))
    zero["stderr"] = np.sqrt(zero.accuracy * (1 - zero.accuracy) / zero.n)
    ax = plots.zero_shot(zero, "z").axes[0]
    assert heights(ax) == pytest.approx([0.6, 0.7, 0.5, 0.4])   # fp32 bars (fpb, tfns), then nf4
    dashed = [c for c in ax.collections if c.get_linestyle()[0][1] is not None]   # the error bars are solid
    assert sorted(seg[0][1] for c in dashed for seg in c.get_segments()) == pytest.approx([0.55, 0.65])
    assert ax.get_ylim() == (0, 1)


def test_planner_breakdown_stacks_every_component():
    breakdown = pd.DataFrame(dict(config=["4-bit r4", "4-bit r4 ckpt"], weights=[4.0, 4.0],
                                  activations=[6.0, 1.0], total_GiB=[10.0, 5.0]))
    ax = plots.planner_breakdown(breakdown, "b").axes[0]
    assert heights(ax) == [4.0, 4.0, 6.0, 1.0]   # total_GiB is not a segment
    assert [p.get_y() for p in ax.patches][2:] == [4.0, 4.0]


def test_paper_memory_puts_the_paper_beside_each_scenario():
    paper = pd.DataFrame(dict(scenario=["a", "a", "b", "b"], bits=[8, 4, 8, 4], batch=[4, 4, 4, 4],
                              paper_gb=[11.4, 8.3, 11.4, 8.3], predicted=[10.0, 8.0, 11.0, 8.5]))
    ax = plots.paper_memory(paper, "p").axes[0]
    assert heights(ax) == [10.0, 8.0, 11.0, 8.5, 11.4, 8.3]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8-bit b4", "4-bit b4"]


def test_planner_accuracy_points_in_mib_with_the_band():
    acc = pd.DataFrame(dict(model=["a", "b"], measured_bytes=[100 * 2**20, 200 * 2**20],
                            predicted_bytes=[110 * 2**20, 150 * 2**20]))
    ax = plots.planner_accuracy(acc, "c").axes[0]
    points = np.vstack([c.get_offsets() for c in ax.collections if c.get_label() in ("a", "b")])
    assert points.tolist() == [[100.0, 110.0], [200.0, 150.0]]
    assert any(c.get_label() == "±10 %" for c in ax.collections)


def test_figure_titles_carry_the_machines_and_the_base_weights():
    """A figure saved alone must say where its numbers came from: report.figure_note names each machine (with its
    run count when they differ) and, for the embedded model, that its '16-bit' is the dequantized Q4_1 GGUF."""
    from finlora_utils import report

    def run(cpu, model="embedded"):
        return {"run_info": {"config": {"model": model}}, "meta_info": {"hardware": {"cpu": cpu, "gpu": None}}}

    runs = [run("Intel(R) Xeon(R) Processor"), run("AMD EPYC"), run("AMD EPYC")]
    note = report.figure_note(runs)
    assert note.startswith("machines: AMD EPYC (2 runs), Intel Xeon (1 run); base: embedded")
    assert "Q4_1 GGUF dequantized" in note
    assert report.figure_note([run("AMD EPYC 7763 64-Core Processor", "meta-llama/Llama-3.1-8B")]) == \
        "machines: AMD EPYC 7763 64-Core"
    capped = run("AMD EPYC")
    capped["meta_info"]["hardware"]["isa_caps"] = {"ONEDNN_MAX_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2"}
    assert report.figure_note([capped, run("AMD EPYC")]).startswith(
        "machines: AMD EPYC capped at AVX2 (1 run), AMD EPYC (1 run)")   # a capped run never reads as uncapped
    for caps, label in (({"ONEDNN_MAX_CPU_ISA": "all"}, "AMD EPYC"), ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
                        "AMD EPYC capped at AVX2"), ({"ONEDNN_MAX_CPU_ISA": "DEFAULT", "ATEN_CPU_CAPABILITY": "avx2"},
                        "AMD EPYC capped at AVX2")):   # oneDNN's ALL / DEFAULT are no cap
        capped["meta_info"]["hardware"]["isa_caps"] = caps
        assert report.machine(capped) == label, caps
    cm = pd.DataFrame([[3, 1], [0, 4]], index=["neg", "pos"], columns=["neg", "pos"])
    fig = plots.fig_confusions({"base": cm, "4-bit r4": cm}, f"fpb: confusion matrices\n{note}")
    assert fig._suptitle.get_text().replace("\n", " ").endswith(note.split(";")[1].strip().replace("\n", " "))
    title = plots.bar(pd.DataFrame({"c": ["a", "b"], "y": [1.0, 2.0]}), "c", "y", f"speed\n{note}").axes[0].get_title()
    assert title.startswith("speed\nmachines: AMD EPYC (2 runs)") and all(len(t) <= 90 for t in title.split("\n"))
