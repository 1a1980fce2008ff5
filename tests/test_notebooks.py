"""Every notebook runs end to end under papermill with the smoke preset, and leaves its outputs."""
import json
from pathlib import Path

import nbformat
import pytest

from finlora_utils import study

NOTEBOOK_FILES = sorted(Path(study.notebooks_dir()).glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_committed_notebook_is_thin_and_clean(path):
    nb = nbformat.read(str(path), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert nb.cells[0].cell_type == "markdown", "first cell says what question the notebook answers"
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs, f"{path.name}: committed with outputs"
            assert c.execution_count is None
    params = tagged[0].source.splitlines()
    for name in ("PRESET", "SEED", "OUTPUT_DIR", "INTERACTIVE"):
        assert any(line.startswith(f"{name} =") for line in params), f"{path.name}: parameter {name} missing"
    for line in params:
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"{path.name}: parameter without a comment: {line!r}"
            # papermill cannot parse a parameter whose comment holds '=' and silently drops it
            assert "=" not in line.split("#", 1)[1], f"{path.name}: '=' in a parameter comment: {line!r}"


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    index = study.run_study("smoke", out, timeout=600)
    return out, index


@pytest.mark.slow   # the smoke study they share runs every notebook (~2 min)
def test_study_runs_every_notebook_with_the_smoke_preset(smoke_study):
    out, index = smoke_study
    names = study.available_notebooks()
    assert names and names[0] == "00_data"
    for name in names:
        executed = out / "executed" / f"{name}.ipynb"
        assert executed.stat().st_size > 0
        nb = nbformat.read(str(executed), as_version=4)
        assert nb.metadata["papermill"]["parameters"]["PRESET"] == "smoke"
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors
        assert (out / "html" / f"{name}.html").stat().st_size > 1000
    text = index.read_text()
    assert all(f"html/{n}.html" in text for n in names)


@pytest.mark.slow
def test_every_figure_has_its_numbers_beside_it(smoke_study):
    out, _ = smoke_study
    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs, "the study produced no figures"
    for png in pngs:
        csv = png.with_suffix(".csv")
        assert png.stat().st_size > 1000, png.name
        assert csv.exists() and len(csv.read_text().splitlines()) >= 2, f"{csv.name} missing or empty"
    for res in (out / "results").glob("*.json"):
        json.loads(res.read_text())  # every results file is complete JSON


@pytest.mark.slow
def test_every_page_shows_its_figures_and_no_path_of_this_machine(smoke_study):
    """03's figures were closed unshown in a batch run (its page had 1 image of 4 saved), and pages printed the
    report folder's and the checkout's absolute paths (results, warnings' source lines)."""
    import re

    from finlora_utils.paths import project_root

    out, _ = smoke_study
    for name in study.available_notebooks():
        saved = list((out / "figures").glob(f"{name[:2]}_*.png"))
        page = (out / "html" / f"{name}.html").read_text()
        shown = len(re.findall(r"<img[^>]+src=\"data:image/png", page))
        assert shown >= len(saved), f"{name}: {shown} figures on the page, {len(saved)} saved"
        for root in (str(out.resolve()), str(project_root().resolve())):
            assert root + "/" not in page, f"{name}: {root} on the page"


def test_a_misspelt_or_mistyped_papermill_parameter_stops_the_notebook_naming_it(tmp_path):
    """papermill -p only logs an unknown name and runs on with the default; -p SAMPLE_SIZE abc failed cells
    later as a bare TypeError. The cell after the parameters names both."""
    import papermill as pm

    for params, message in (({"SAMPLE_SIZ": 10}, "'SAMPLE_SIZ' is not a parameter of 00_data (did you mean "
                                                 "'SAMPLE_SIZE'?)"),
                            ({"SAMPLE_SIZE": "abc"}, "SAMPLE_SIZE='abc': expected an integer, like the default")):
        with pytest.raises(pm.PapermillExecutionError) as e:
            pm.execute_notebook(str(study.notebook_path("00_data")), str(tmp_path / "out.ipynb"), cwd=str(tmp_path),
                                parameters=dict(params, MODEL="tiny-random-llama", OUTPUT_DIR=str(tmp_path)),
                                kernel_name="python3", progress_bar=False, log_output=False)
        assert e.value.ename == "ConfigError" and message in e.value.evalue, e.value.evalue
    for nb in study.available_notebooks():   # the defaults pass their own check
        study.check_notebook(nb, study.parameter_defaults(nb))
    with pytest.raises(study.ConfigError, match=r"FORCE='False': expected True or False"):
        study.check_notebook("03_finetune", dict(study.parameter_defaults("03_finetune"), FORCE="False"))
    study.check_notebook("02_lora_setup", dict(study.parameter_defaults("02_lora_setup"), RANKS=8))   # -p RANKS 8


def test_shareable_text_makes_paths_relative_to_the_report_then_the_checkout(tmp_path, monkeypatch):
    from pathlib import Path

    from finlora_utils.paths import project_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out, root = tmp_path / "rep", project_root().resolve()
    text = (f"results {out}/results/a.json\n{root}/finlora_utils/lora.py:389: UserWarning\n"
            f"cache {tmp_path}/home/.cache/x, not {tmp_path}/homework/y")
    assert study.shareable_text(text, out) == (f"results results/a.json\nfinlora_utils/lora.py:389: UserWarning\n"
                                               f"cache ~/.cache/x, not {tmp_path}/homework/y")
    assert Path.home() == tmp_path / "home"
    coloured = f"\x1b[32m{root}/finlora_utils/config.py\x1b[0m in \x1b[0;36m{tmp_path}/home/x\x1b[0m"   # a traceback
    assert study.shareable_text(coloured, out) == "\x1b[32mfinlora_utils/config.py\x1b[0m in \x1b[0;36m~/x\x1b[0m"


def test_the_kernel_gets_its_environment_and_the_caller_keeps_its_own(tmp_path, monkeypatch):
    """The kernel starts with the libraries' bars off and an absolute data dir; the calling process's environment is
    left as it was (datasets reads its variable once, at import: a leftover switched later bars off for good)."""
    import os

    import papermill as pm

    seen = {}
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")   # a user's own choice reaches the kernel
    monkeypatch.setenv("FINLORA_DATA_DIR", "rel/data")
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **k: seen.update(os.environ))
    study.run_notebook("06_report", "smoke", tmp_path)
    assert seen["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1" and seen["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
    assert seen["FINLORA_DATA_DIR"] == str(Path("rel/data").resolve())
    assert "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ and os.environ["FINLORA_DATA_DIR"] == "rel/data"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"


def test_study_force_sets_force_in_the_notebooks_that_take_it(tmp_path, monkeypatch):
    """`make study FORCE=1`: a run whose data changed says FORCE retrains, which the study could not pass on."""
    seen = {}

    def fake_run(name, preset, out_root, timeout=None, extra_params=None, **kw):
        seen[name] = extra_params
        return tmp_path / f"{name}.ipynb"
    monkeypatch.setattr(study, "run_notebook", fake_run)
    monkeypatch.setattr(study, "render_html", lambda executed, html_dir, **kw: html_dir / "x.html")
    monkeypatch.setattr(study, "data_plan", lambda *a: {"label": "real", "missing": [], "tasks": {}})
    monkeypatch.setattr(study, "data_banner_html", lambda *a: "")
    monkeypatch.setattr(study, "write_index", lambda *a, **k: tmp_path / "index.html")
    assert study.main(["all", "--notebooks", "00_data,03_finetune,04_parallel", "--force", "--output-dir",
                       str(tmp_path)]) == 0
    assert seen == {"00_data": None, "03_finetune": {"FORCE": True}, "04_parallel": {"FORCE": True}}
    assert study.main(["run", "03_finetune.ipynb", "--output-dir", str(tmp_path)]) == 0 and seen["03_finetune"] is None
    assert "--force" in Path(study.project_root() / "Makefile").read_text()


def test_a_notebooks_own_upper_case_names_pass_the_check_when_a_cell_runs_again():
    """01 sets FIG_DIR in the cell that checks the parameters: running that cell a second time named FIG_DIR."""
    ns = dict(study.parameter_defaults("01_quantization"), FIG_DIR="x/figures", RES_DIR="x/results")
    study.check_notebook("01_quantization", ns)
    with pytest.raises(study.ConfigError, match="'FIG_DIRS' is not a parameter"):
        study.check_notebook("01_quantization", dict(ns, FIG_DIRS="y"))


def test_run_notebook_named_with_its_suffix_writes_the_notebooks_own_file(tmp_path, monkeypatch):
    """run_notebook("03_finetune.ipynb") stripped the suffix only after naming its output 03_finetune.ipynb.ipynb."""
    import papermill as pm

    seen = {}
    monkeypatch.setattr(pm, "execute_notebook", lambda src, dst, parameters=None, **kw: seen.update(
        src=src, dst=dst, preset=parameters["PRESET"]))
    out = study.run_notebook("00_data.ipynb", "smoke", tmp_path)
    assert out == (tmp_path / "executed" / "00_data.ipynb").resolve() and seen["dst"] == str(out)
    assert seen["src"].endswith("notebooks/00_data.ipynb") and seen["preset"] == "smoke"
