import json
import os
from pathlib import Path

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
    p.write_bytes(b'{"run_id": "caf\xe9"}')
    with pytest.raises(results.ResultsError, match=r"bad\.json: not UTF-8 text"):
        results.read_result(p)
    p.write_text("[1, 2]")
    with pytest.raises(results.ResultsError, match=r"bad\.json: a JSON list, expected a results object"):
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
    """Notebook 01 writes its base results through evaluate_base, the one writer that names a base model's
    zero-shot result (06 counts it once); NF4 and FP4 share 4 bits but not an id."""
    from pathlib import Path

    from finlora_utils import results

    assert results.base_run_id("fpb", "embedded", "nf4") == "fpb_smollm2-135m_4bit_base"
    assert results.base_run_id("fpb", "embedded", "fp4") != results.base_run_id("fpb", "embedded", "nf4")
    assert results.base_run_id("fpb", "embedded", "bf16") == "fpb_smollm2-135m_16bit_base"
    with pytest.raises(ValueError, match="precision='auto'"):
        results.base_run_id("fpb", "embedded", "auto")
    nb = (Path(__file__).resolve().parents[1] / "notebooks" / "01_quantization.ipynb").read_text()
    assert "evaluate.evaluate_base(" in nb and "_base\\\"" not in nb
    assert "new_result" not in nb and "write_json" not in nb   # no second, hand-made writer of base files


def test_trained_run_writer_writes_what_the_engine_wrote(tmp_path):
    info = {"wall_s": 1.5, "peak_mem_bytes": 123, "adapter_path": "reports/runs/x/adapter"}
    files = {"fpb/train.jsonl": "ab" * 32}
    doc = results.write_trained_run(tmp_path / "r.json", "fpb_x_4bit_r4", {"lr": 1e-4, "results_dir": "/elsewhere"},
                                    7, info, preset="smoke", data_source="real",
                                    base_model={"source": "test"}, data_files=files)
    r = results.read_result(tmp_path / "r.json", require=["train_info.wall_s", "run_info.data_files",
                                                           "meta_info.base_model.source"])
    assert r == json.loads(json.dumps(doc))
    assert list(r) == ["schema_version", "run_id", "run_info", "train_info", "eval_info", "meta_info"]
    assert r["train_info"] == info and r["eval_info"] == {} and r["run_info"]["data_files"] == files
    assert (r["run_id"], r["run_info"]["seed"], r["run_info"]["preset"]) == ("fpb_x_4bit_r4", 7, "smoke")


def test_base_eval_writer_leaves_train_info_null(tmp_path):
    from finlora_utils import report

    entry = {"mode": "score", "n": 4, "accuracy": 0.5, "f1_weighted": 0.4, "majority_baseline": 0.75,
             "pred_distribution": {"positive": 4}, "wall_s": 0.1, "precision": "nf4"}
    rid = results.base_run_id("fpb", "embedded", "nf4")
    results.write_base_eval(tmp_path / f"{rid}.json", rid, {"model": "embedded", "tasks": ["fpb"]}, 0, "fpb", entry,
                            base_model={"source": "gguf"})
    [r] = results.load_results(tmp_path)
    assert r["train_info"] is None and r["eval_info"] == {"fpb": entry}
    assert r["meta_info"]["base_model"] == {"source": "gguf"} and report.config_label(r) == "base"


def test_bench_writer_puts_sections_after_the_schema_and_refuses_its_keys(tmp_path):
    from finlora_utils.paths import project_root

    inside = f"{project_root()}/reports/x.csv"
    doc = results.write_bench(tmp_path / "b.json", "planner_accuracy", {"grid": [1, 2]},
                              {"rows": [{"a": 1}], "csv": inside}, portable=True, commit="abc123")
    r = results.read_result(tmp_path / "b.json")
    assert r == doc and list(r)[-2:] == ["rows", "csv"] and r["csv"] == "reports/x.csv"
    assert r["train_info"] is None and r["eval_info"] == {} and r["run_info"]["seed"] == 0
    assert r["run_info"]["git_commit"] == "abc123"   # read when the bench started, not when it wrote
    assert results.write_bench(tmp_path / "k.json", "k", {}, eval_info={"n": 3}, commit=None)["eval_info"] == {"n": 3}
    with pytest.raises(ValueError, match="run_info"):
        results.write_bench(tmp_path / "c.json", "c", {}, {"run_info": {}}, commit=None)
    with pytest.raises(TypeError, match="commit"):   # every bench must say which code it started with
        results.write_bench(tmp_path / "d.json", "d", {})
    assert not (tmp_path / "c.json").exists()


def test_git_commit_is_dirty_for_changed_files_and_new_code_only(tmp_path, monkeypatch):
    """A tracked file changed, or an untracked file where code lives (a new module the package imports), makes
    the commit '-dirty'; an untracked file elsewhere (a grid's new showcase result) or an ignored one does not."""
    import subprocess

    from finlora_utils import paths

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("__pycache__/\n")
    (tmp_path / "finlora_utils").mkdir()
    (tmp_path / "finlora_utils" / "a.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    monkeypatch.setattr(paths, "project_root", lambda: tmp_path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert results.git_commit() == head
    (tmp_path / "reports" / "showcase").mkdir(parents=True)
    (tmp_path / "reports" / "showcase" / "new.json").write_text("{}")
    (tmp_path / "finlora_utils" / "__pycache__").mkdir()
    (tmp_path / "finlora_utils" / "__pycache__" / "a.pyc").write_bytes(b"")
    assert results.git_commit() == head
    (tmp_path / "finlora_utils" / "b.py").write_text("y = 2\n")
    assert results.git_commit() == head + "-dirty"
    (tmp_path / "finlora_utils" / "b.py").unlink()
    (tmp_path / "finlora_utils" / "a.py").write_text("x = 2\n")
    assert results.git_commit() == head + "-dirty"


def test_written_files_get_the_umask_permissions_not_owner_only(tmp_path):
    """mkstemp / mkdtemp / safetensors write owner-only (0600 / 0700): a results file, an adapter or a merged model
    a colleague should read came out unreadable to them under the usual umask 022."""
    import tempfile

    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        path = results.write_json(tmp_path / "r.json", {"a": 1})
        assert path.stat().st_mode & 0o777 == 0o644
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        save_file({"w": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))
        assert (folder / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o600   # what the writer does
        results.usual_permissions(folder)
        assert folder.stat().st_mode & 0o777 == 0o755
        assert (folder / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)   # a user who wants private files keeps them private
        assert results.write_json(tmp_path / "p.json", {}).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_a_run_names_its_commit_from_git_or_from_a_claim_git_cannot_contradict(monkeypatch):
    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(results, "git_commit", lambda: None)   # a copy of the tree without .git
    assert results.run_commit(None) is None and results.run_commit(sha) == sha
    with pytest.raises(ValueError, match="--commit='abc': expected a full 40-hex-digit commit"):
        results.run_commit("abc")
    monkeypatch.setattr(results, "git_commit", lambda: "f" * 40 + "-dirty")
    assert results.run_commit(None) == "f" * 40 + "-dirty"
    with pytest.raises(ValueError, match=f"--commit={sha}: this checkout is at f{{40}}-dirty"):
        results.run_commit(sha)
