import json
import os

import pytest

from finlora_utils import results


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    results.write_json(target, {"a": 1})

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        results.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}          # old content intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]   # no temp file left behind


def test_new_result_records_how_it_was_made(tmp_path):
    r = results.new_result("fpb_smollm2-135m_4bit_r4", {"lr": 1e-4}, seed=3, preset="smoke", data_source="real")
    assert r["run_info"]["seed"] == 3 and r["run_info"]["config"] == {"lr": 1e-4}
    assert r["meta_info"]["packages"]["torch"]
    assert "cpu" in r["meta_info"]["hardware"]
    path = results.write_json(tmp_path / "x.json", r)
    assert results.read_result(path)["run_id"] == r["run_id"]


def test_missing_field_names_file_and_field(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"run_id": "x", "run_info": {}, "meta_info": {}}))
    with pytest.raises(results.ResultsError, match=r"bad\.json: missing field 'train_info\.wall_s'"):
        results.load_results(tmp_path, require=["train_info.wall_s"])
    p.write_text("{not json")
    with pytest.raises(results.ResultsError, match=r"bad\.json:1: not valid JSON"):
        results.read_result(p)


def test_update_result_merges_sections(tmp_path):
    p = results.write_json(tmp_path / "r.json", {"run_id": "r", "run_info": {}, "meta_info": {},
                                                 "eval_info": {"fpb": {"accuracy": 0.5}}})
    results.update_result(p, eval_info={"tfns": {"accuracy": 0.7}})
    assert set(results.read_result(p)["eval_info"]) == {"fpb", "tfns"}


def test_tokens_never_reach_results(monkeypatch):
    fake = "hf_" + "secret" * 6   # built at run time: no token-shaped literal in the source
    monkeypatch.setenv("HF_TOKEN", fake)
    r = results.new_result("x", {}, seed=0)
    assert fake not in json.dumps(r) and "secret" not in json.dumps(r)


def test_base_run_ids_are_built_in_one_place():
    """Notebook 01 and evaluate_base name a base model's zero-shot result the same way (06 counts it once);
    NF4 and FP4 share 4 bits but not an id."""
    from pathlib import Path

    from finlora_utils import results

    assert results.base_run_id("fpb", "embedded", "nf4") == "fpb_smollm2-135m_4bit_base"
    assert results.base_run_id("fpb", "embedded", "fp4") != results.base_run_id("fpb", "embedded", "nf4")
    assert results.base_run_id("fpb", "embedded", "bf16") == "fpb_smollm2-135m_16bit_base"
    with pytest.raises(ValueError, match="precision='auto'"):
        results.base_run_id("fpb", "embedded", "auto")
    nb = (Path(__file__).resolve().parents[1] / "notebooks" / "01_quantization.ipynb").read_text()
    assert "results.base_run_id(" in nb and "_base\\\"" not in nb
