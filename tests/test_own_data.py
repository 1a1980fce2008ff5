"""Own data end to end: a task defined by a JSONL or CSV file trains, evaluates and predicts through the CLI;
label inference, the bad-file errors and the one entry point's verb list."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from finlora_utils import data
from finlora_utils.__main__ import VERBS
from finlora_utils.__main__ import main as cli
from finlora_utils.config import ConfigError, TrainConfig

OWN = Path(__file__).parent / "data" / "own"
SUPPORT_TRAIN, SUPPORT_TEST = OWN / "support_train.jsonl", OWN / "support_test.jsonl"
ESG_TRAIN, ESG_TEST = OWN / "esg_train.csv", OWN / "esg_test.csv"


def test_jsonl_task_infers_labels_splits_and_records_provenance():
    t = data.register_files(SUPPORT_TRAIN, test=SUPPORT_TEST)
    assert t.name == "support" and t.kind == "classification" and t.labels == ("card", "fraud", "loan")
    assert t.prompt_format == "instruction" and t.instruction.startswith("Which desk")
    train, test = data.load_task("support", "train"), data.load_task("support", "test")
    assert (len(train), len(test)) == (27, 9) and set(train["source"]) == {"file"}
    val, fit = data.load_task("support", "validation"), data.load_task("support", "fit")
    assert len(val) == 3 and len(fit) == 24 and not set(val["context"]) & set(fit["context"])
    assert set(val["target"]) == {"card", "fraud", "loan"}   # stratified like the built-in tasks' holdout
    prov = data.provenance("support")[0]
    assert [f["split"] for f in prov["files"]] == ["train", "test"] and prov["labels_inferred"]
    assert prov["files"][0]["sha256"] == hashlib.sha256(SUPPORT_TRAIN.read_bytes()).hexdigest()


def test_label_inference_limit_and_explicit_labels(tmp_path):
    gen = data.register_files(SUPPORT_TRAIN, name="support_gen", max_labels=2)
    assert gen.kind == "generation" and gen.labels is None      # 3 distinct targets > max_labels=2
    assert data.register_files(SUPPORT_TRAIN, name="support_all", max_labels=3).labels == ("card", "fraud", "loan")
    with pytest.raises(ConfigError, match=r"support_train\.jsonl:\d+: target 'loan' is not in labels"):
        data.register_files(SUPPORT_TRAIN, name="x", labels=["card", "fraud"])
    one = tmp_path / "one_train.csv"
    one.write_text("text,label\na,yes\nb,yes\n")
    with pytest.raises(ConfigError, match="at least 2 labels"):
        data.register_files(one)


def test_csv_rows_become_finlora_prompts():
    t = data.register_files(ESG_TRAIN, test=ESG_TEST)
    assert t.name == "esg" and t.labels == ("environmental", "governance", "social")
    ds = data.load_task("esg", "test")
    instr, text = data.split_prompt(ds[0]["context"])
    assert instr == "What is the label of this text? Please choose an answer from {environmental/governance/social}."
    assert text and ds[0]["target"] in t.labels
    t2 = data.register_files(ESG_TRAIN, name="esg2", instruction="Which ESG pillar is this about?")
    assert data.load_task("esg2", "train")[0]["context"].startswith("Instruction: Which ESG pillar is this about?\n")
    assert len(data.load_task("esg2", "test")) == 3     # no test file: the validation holdout is the test split
    assert len(data.load_task("esg2", "train")) == 24   # ... and train leaves it out
    assert t2.description.endswith("(test: the validation holdout of train)")


def test_bad_files_give_file_line_errors(tmp_path):
    bad = tmp_path / "bad_train.jsonl"
    lines = SUPPORT_TRAIN.read_text().splitlines()
    lines[2] = lines[2][:-2]                           # truncated JSON on line 3
    lines[5] = json.dumps({"context": "Instruction: x\nInput: y\nAnswer: ", "target": ""})
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as e:
        data.register_files(bad)
    msg = str(e.value)
    assert f"{bad}:3: malformed JSON" in msg and f"{bad}:6: \"target\" is empty" in msg
    assert msg.startswith("train_file=")
    csv_bad = tmp_path / "b_train.csv"
    csv_bad.write_text("text,category\nhello,a\n")
    with pytest.raises(ConfigError, match=rf"{csv_bad}:1: no label column 'label' or 'target' or 'answer'"):
        data.register_files(csv_bad)
    csv_bad.write_text("text,label\nhello,a\n,b\nbye\n")
    with pytest.raises(ConfigError) as e:
        data.register_files(csv_bad)
    assert f"{csv_bad}:3: empty text" in str(e.value) and f"{csv_bad}:4: 1 fields, the header has 2" in str(e.value)


def test_test_labels_outside_the_train_label_set_are_named(tmp_path):
    test = tmp_path / "t.jsonl"
    rows = [json.loads(x) for x in SUPPORT_TEST.read_text().splitlines()]
    rows[1]["target"], rows[4]["target"] = "mortgage", "Card"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"test labels not in the train label set: 'Card', 'mortgage' "
                                          r"\(first on line 5, 2\); train labels: card, fraud, loan"):
        data.register_files(SUPPORT_TRAIN, test=test)


def test_config_names_the_file_task():
    c = TrainConfig(train_file="x/my_bank-train.jsonl", model="tiny-random-llama")
    assert c.tasks == ("my_bank",) and c.run_id().startswith("my_bank_tiny-random-llama")
    assert TrainConfig(train_file="a.csv", tasks="fpb,own", task_name="own").tasks == ("fpb", "own")
    with pytest.raises(ConfigError, match="test_file=.*t.jsonl.: expected to be given with train_file"):
        TrainConfig(test_file="t.jsonl")
    with pytest.raises(ConfigError, match="task_name='fpb': a built-in task has this name"):
        data.register_files(SUPPORT_TRAIN, name="fpb")


def test_train_cli_reports_a_bad_file_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from finlora_utils import models, train

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(train, "build_model", no_model)
    monkeypatch.setattr(models, "load_model", no_model)
    bad = tmp_path / "bad_train.jsonl"
    bad.write_text(SUPPORT_TRAIN.read_text() + "{not json}\n")
    rc = cli(["train", "--model", "tiny-random-llama", "--train-file", str(bad), "--output-dir", str(tmp_path / "runs"),
              "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: train_file=") and f"{bad}:28: malformed JSON" in err
    assert not list((tmp_path / "runs").glob("*"))   # no empty run folder left behind by the refused run


def test_cli_lists_the_verbs_and_refuses_unknown_ones(capsys, monkeypatch):
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("train", "evaluate", "sweep", "merge", "export", "predict", "validate", "estimate", "study"):
        assert f"\n  {verb} " in out
    assert cli(["frobnicate"]) == 2
    assert "error: unknown verb 'frobnicate'; expected one of train, parallel, evaluate" in capsys.readouterr().err
    monkeypatch.setitem(VERBS, "merge", ("finlora_utils.no_such_module", "merge"))
    assert cli(["merge", "x"]) == 2
    assert "error: merge: finlora_utils.no_such_module is not part of this installation" in capsys.readouterr().err
    assert cli(["validate", str(SUPPORT_TRAIN), "--no-tokens"]) == 0
    assert "27 rows" in capsys.readouterr().out
    assert cli(["estimate", "--model", "smollm2-135m", "--bits", "4", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_bytes"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("train_file,test_file,task", [(SUPPORT_TRAIN, SUPPORT_TEST, "support"),
                                                       (ESG_TRAIN, ESG_TEST, "esg")])
def test_own_data_trains_evaluates_and_predicts_through_the_cli(tmp_path, capsys, train_file, test_file, task):
    """20-40 s each on the dev box (Xeon, 2 cores shared with other jobs; the first pays the imports): tiny
    random model, fp32, 3 steps, then evaluate and four predicts."""
    res_dir = tmp_path / "results"
    # the run names its files relative to the cwd, as a user would
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(train_file, work / train_file.name)
    shutil.copy(test_file, work / test_file.name)
    import os

    cwd = os.getcwd()
    os.chdir(work)
    try:
        rc = cli(["train", "--model", "tiny-random-llama", "--precision", "fp32", "--train-file", train_file.name,
                  "--test-file", test_file.name, "--max-steps", "3", "--batch-size", "4", "--lr", "0.01",
                  "--output-dir", str(tmp_path / "runs"), "--results-dir", str(res_dir)])
    finally:
        os.chdir(cwd)
    assert rc == 0, capsys.readouterr().err
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    r = json.loads(path.read_text())
    assert r["run_id"] == f"{task}_tiny-random-llama_32bit_r4" and r["run_info"]["config"]["tasks"] == [task]
    files = r["run_info"]["data_files"][0]["files"]
    assert [f["sha256"] for f in files] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (train_file, test_file)]
    assert r["train_info"]["examples_per_task"] == {task: 27}

    data.tasks.FILE_TASKS.pop(task, None)   # as in a new process: the run's config brings the task back
    assert cli(["evaluate", str(path), "--batch-size", "4"]) == 0
    assert f"{r['run_id']} {task}: score accuracy" in capsys.readouterr().out
    entry = json.loads(path.read_text())["eval_info"][task]
    assert entry["n"] == len(data.load_task(task, "test")) and entry["data_files"][0]["files"][1]["split"] == "test"

    # a new test file for the trained run: its task, labels and instruction as trained, the file by sha256
    newer = tmp_path / f"{task}_q4{test_file.suffix}"
    newer.write_text("".join(test_file.read_text().splitlines(keepends=True)[:5]))
    assert cli(["evaluate", str(path), "--test-file", str(newer), "--batch-size", "4"]) == 0
    e2 = json.loads(path.read_text())["eval_info"][task]
    assert e2["n"] == (4 if test_file.suffix == ".csv" else 5)
    assert Path(e2["data_files"][0]["files"][1]["path"]).name == newer.name
    assert cli(["evaluate", str(path), "--train-file", str(train_file)]) == 2   # it was ignored, silently
    assert "--train-file: only with --base" in capsys.readouterr().err
    assert cli(["evaluate", "--base", "tiny-random-llama", "--tasks", "fpb", "--test-file", str(newer)]) == 2
    assert "--test-file: only with --train-file (own data)" in capsys.readouterr().err

    out = tmp_path / "pred.jsonl"
    assert cli(["predict", str(path), "--file", str(test_file), "--batch-size", "3", "--out", str(out)]) == 0
    preds = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(preds) == entry["n"]
    for p in preds:
        assert abs(sum(p["probs"].values()) - 1) < 1e-4 and p["label"] == max(p["probs"], key=p["probs"].get)
    # the same scoring code as evaluation: the same label for every test example
    assert [p["label"] for p in preds] == entry["modes"]["score"]["predictions"]
    assert cli(["predict", str(path), "a message about something", "--batch-size", "2"]) == 0
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert one["text"] == "a message about something" and set(one["probs"]) == set(entry["labels"])
    # an adapter folder (base model from its adapter_config.json) and a plain transformers folder (as a merge writes)
    adapter = Path(r["train_info"]["adapter_path"])
    out2 = tmp_path / "pred.csv"
    assert cli(["predict", str(adapter), "--train-file", str(train_file), "--precision", "fp32", "--file",
                str(test_file), "--out", str(out2)]) == 0
    import pandas as pd

    assert list(pd.read_csv(out2)["label"]) == [p["label"] for p in preds]
    # a train file whose task is not the adapter's scored with its default instruction, a prompt never trained on
    renamed = tmp_path / f"renamed{train_file.suffix}"
    shutil.copy(train_file, renamed)
    assert cli(["predict", str(adapter), "--train-file", str(renamed), "--precision", "fp32", "a text"]) == 2
    assert f"task 'renamed' (a file task) is not one {adapter} was trained on ({task})" in capsys.readouterr().err
    from finlora_utils.models import resolve_model_path

    assert cli(["predict", resolve_model_path("tiny-random-llama"), "--labels", ",".join(entry["labels"]),
                "--precision", "fp32", "hello there"]) == 0
    base = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(base["probs"]) == set(entry["labels"]) and abs(sum(base["probs"].values()) - 1) < 1e-4
    # the train file moved away: predict takes the labels and instruction the adapter records; evaluate needs it
    (work / train_file.name).rename(work / "moved.tmp")
    data.tasks.FILE_TASKS.pop(task, None)
    assert cli(["predict", str(path), "a message about something", "--batch-size", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == one
    assert cli(["evaluate", str(path)]) == 2 and "no such file" in capsys.readouterr().err


def test_texts_to_label_are_read_whole_or_refused_with_the_line(tmp_path):
    from finlora_utils.data.files import read_texts

    good = tmp_path / "new.csv"
    good.write_text('id,text\n1,"Loan approved, after review."\n\n2,Card blocked.\n')
    assert read_texts(good) == ["Loan approved, after review.", "Card blocked."]
    short = tmp_path / "short.csv"
    short.write_text("id,text\n1,hello\n2\n3,world\n")   # row 3 lost a field: refused, not silently dropped
    with pytest.raises(ConfigError, match=rf"{short}:3: 1 fields, the header has 2"):
        read_texts(short)
    for name in ("latin1.csv", "latin1.jsonl", "latin1.txt"):
        bad = tmp_path / name
        csv_file = name.endswith(".csv")
        bad.write_bytes(b"text\nfine\ncaf\xe9\n" if csv_file else b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
        with pytest.raises(ConfigError, match=rf"{bad}:(2|3): not valid UTF-8 \(byte 0xe9\)"):
            read_texts(bad)


@pytest.mark.slow
def test_named_columns_train_and_a_changed_file_is_not_passed_off_as_the_finished_run(tmp_path, capsys):
    """A CSV whose columns are not text/label trains with --text-column/--label-column (validate took them, train
    once did not). Rerunning the same command reuses the finished run only while the file is the one it trained on:
    an edited file (new labels) is refused by name, not answered with the old adapter's results."""
    import csv

    memos = tmp_path / "memos_train.csv"
    with ESG_TRAIN.open(encoding="utf-8") as f, memos.open("w", encoding="utf-8", newline="") as g:
        w = csv.writer(g)
        w.writerow(["memo", "pillar"])
        w.writerows([r["text"], r["label"]] for r in csv.DictReader(f))
    args = ["train", "--model", "tiny-random-llama", "--precision", "fp32", "--train-file", str(memos),
            "--text-column", "memo", "--label-column", "pillar", "--max-steps", "2", "--batch-size", "4",
            "--output-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    assert cli(["validate", str(memos), "--text-column", "memo", "--label-column", "pillar", "--no-tokens"]) == 0
    assert cli(args) == 0, capsys.readouterr().err
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    r = json.loads(path.read_text())
    assert r["run_info"]["config"]["label_column"] == "pillar" and r["train_info"]["examples_per_task"]["memos"] > 0
    assert cli(args) == 0 and "finished earlier" in capsys.readouterr().out   # the same file: nothing to redo
    memos.write_text(memos.read_text(encoding="utf-8").replace(",governance", ",social"), encoding="utf-8")
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f"train_file={str(memos.resolve())!r}: the data changed since {path}" in err
    assert "--force (FORCE = True in a notebook, make study FORCE=1, force=True in Python)" in err and "--variant-tag" in err
    # predict and evaluate take the run's labels from its file: an edited one is named, not silently used
    for verb in (["predict", str(path), "Rates rose."], ["evaluate", str(path)]):
        assert cli(verb) == 2
        assert f"train_file={str(memos.resolve())!r}: changed since run memos_" in capsys.readouterr().err
    assert cli(args + ["--force"]) == 0
    assert json.loads(path.read_text())["run_info"]["data_files"][0]["files"][0]["sha256"] == \
        hashlib.sha256(memos.read_bytes()).hexdigest()
    assert cli(["predict", str(path), "Rates rose."]) == 0   # retrained on the file as it is: usable again
    capsys.readouterr()
    # the adapter folder, and a model merged from it, carry the labels and instruction their prompts need
    adapter = Path(json.loads(path.read_text())["train_info"]["adapter_path"])
    record = json.loads((adapter / "finlora_task.json").read_text())["tasks"]["memos"]
    assert record["labels"] == ["environmental", "social"]   # as retrained: the edited file has no governance
    assert record["instruction"].startswith("What is the label of this text?")
    merged = tmp_path / "merged"
    assert cli(["merge", str(adapter), "--out", str(merged)]) == 0
    assert json.loads((merged / "finlora_merge.json").read_text())["tasks"]["memos"] == record
    capsys.readouterr()
    assert cli(["predict", str(merged), "--precision", "fp32", "Rates rose."]) == 0   # no --labels to guess
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["probs"]) == set(record["labels"])


def test_a_finished_builtin_run_whose_data_file_changed_is_named(real_data_dir):
    from finlora_utils import engine
    from finlora_utils.data.hashes import file_hashes

    cfg = TrainConfig(model="tiny-random-llama", tasks="fpb")
    stored = file_hashes(["fpb"], "train", real_data_dir)
    assert engine.data_changed(cfg, {"run_info": {"data_files": stored}}, real_data_dir) is None
    key = next(k for k, v in stored.items() if v)
    changed = engine.data_changed(cfg, {"run_info": {"data_files": dict(stored, **{key: "0" * 64})}}, real_data_dir)
    assert changed == f"{key} in FINLORA_DATA_DIR"
    assert engine.data_changed(cfg, {"run_info": {}}, real_data_dir) is None   # results from before the record


def test_default_run_folder_sits_beside_the_results_from_any_folder(tmp_path, monkeypatch):
    """Adapters went to ./reports/runs of whatever folder a user stood in, results to the checkout's reports/."""
    from finlora_utils.paths import reports_dir

    monkeypatch.chdir(tmp_path)
    assert TrainConfig().output_dir == str(reports_dir() / "runs")
    assert TrainConfig(output_dir="mine").output_dir == "mine"   # a folder the user names stays theirs


def test_table_checks_name_duplicates_case_variants_spreadsheets_and_test_rows_seen_in_training(tmp_path):
    """What validate says of a CSV as of a JSONL (it checked duplicates in JSONL only), labels a user would read as
    one class, an .xlsx handed over as is, and a test file that repeats training rows (a leak)."""
    from finlora_utils.data.validate import check_file, check_table

    f = tmp_path / "dup_train.csv"
    f.write_text("text,label\nRates rose.,Up\nRates fell.,down\nRates rose.,Up\nRates held.,up\n", encoding="utf-8")
    rep = check_table(f)
    assert rep.ok and rep.warnings == [(4, "duplicate text (first on line 2)"),
                                       (5, "label 'up' differs from 'Up' (line 2) only in case or spaces: they are two "
                                           "classes")]
    assert [ln for ln, _ in check_table(f, strict=True).errors] == [4, 5]
    alt = tmp_path / "alt_train.csv"
    alt.write_text("text,label\n" + "".join(f"r{i},{('Up', 'up')[i % 2]}\n" for i in range(8)), encoding="utf-8")
    assert len(check_table(alt).warnings) == 1   # alternating spellings: named once, not on every change
    xlsx = tmp_path / "bank.xlsx"
    xlsx.write_bytes(b"PK\x03\x04" + bytes(60))
    for rep in (check_table(xlsx), check_file(xlsx)):
        assert rep.errors == [(1, "an Excel workbook (.xlsx) or another zip archive, not text; save it as CSV UTF-8 "
                                  "(Excel: Save As)")]
    with pytest.raises(ConfigError, match=r"bank\.xlsx:1: an Excel workbook"):
        data.register_files(xlsx)
    test = tmp_path / "leak_test.csv"
    test.write_text("text,label\nRates fell.,down\nNew text.,Up\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"1 of 2 test rows are also in the train file \(first on line 2\)"):
        data.register_files(f, test=test, name="leak")
    assert data.provenance("leak")[0]["test_rows_in_train"] == 1


def test_predict_keeps_the_input_columns_and_refuses_a_row_without_text(tmp_path):
    from finlora_utils.data.files import read_texts
    from finlora_utils.predict import with_input_fields, write_predictions

    f = tmp_path / "new.csv"
    f.write_text("id,text,label\n7,Loan approved.,card\n9,Card blocked.,fraud\n", encoding="utf-8")
    texts, fields = read_texts(f, with_fields=True)
    assert texts == ["Loan approved.", "Card blocked."] and fields == [{"id": "7", "label": "card"},
                                                                       {"id": "9", "label": "fraud"}]
    pred = {"text": "Loan approved.", "label": "loan", "probs": {"card": 0.2, "loan": 0.8}}
    row = with_input_fields(pred, fields[0])   # the gold 'label' column is kept beside the predicted one
    assert list(row) == ["id", "input_label", "text", "label", "probs"] and row["input_label"] == "card"
    out = write_predictions([row], tmp_path / "out.csv").read_text(encoding="utf-8")
    assert out.splitlines() == ["id,input_label,text,label,card,loan", "7,card,Loan approved.,loan,0.2,0.8"]
    tsv = write_predictions([row], tmp_path / "out.tsv").read_text(encoding="utf-8")   # was JSONL under a .tsv name
    assert tsv.splitlines()[1] == "7\tcard\tLoan approved.\tloan\t0.2\t0.8"
    nested = dict(row, meta={"desk": "retail", "tags": ["a"]})   # a JSONL input's nested field: JSON in a table
    out = write_predictions([nested], tmp_path / "nested.csv").read_text(encoding="utf-8")
    assert '"{""desk"": ""retail"", ""tags"": [""a""]}"' in out.splitlines()[1], out
    with pytest.raises(ConfigError, match=r"out=.*out\.txt': expected a file ending in \.jsonl, \.csv, \.tsv"):
        write_predictions([row], tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()
    gap = tmp_path / "gap.csv"
    gap.write_text("id,text\n1,hello\n2,\n3,world\n", encoding="utf-8")   # row 2 has no text: named, not dropped
    with pytest.raises(ConfigError, match=rf"{gap}:3: empty text in column 'text'"):
        read_texts(gap)


def test_repeated_rows_stay_on_one_side_of_the_holdout_and_csv_tests_take_the_jsonl_instruction(tmp_path):
    """An exported table that repeats its rows put copies of held-out texts into training (8 of 10 test texts,
    while the results said 0); CSV test rows beside a FinLoRA-format train file got the default instruction."""
    rows = [(f"message number {i} about an account", ("card", "loan")[i % 2]) for i in range(50)]
    twice = tmp_path / "twice_train.csv"
    twice.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows * 2))
    data.register_files(twice)
    test, fit = data.load_task("twice", "test"), data.load_task("twice", "train")
    assert len(test) >= 10 and not set(test["context"]) & set(fit["context"])
    assert len(test) + len(fit) == 100
    csv_test = tmp_path / "desk_test.csv"
    csv_test.write_text("text,label\nMy card was swallowed by the machine.,card\nWho approves my mortgage?,loan\n")
    t = data.register_files(SUPPORT_TRAIN, test=csv_test, name="desk")
    assert t.instruction.startswith("Which desk should handle this customer message?")
    assert all(c.startswith("Instruction: Which desk should handle") for c in data.load_task("desk", "test")["context"])


def test_a_field_longer_than_the_csv_modules_limit_is_read(tmp_path):
    """A filing is one legal field of >128 KiB: it was 'malformed CSV' in training and a traceback in predict."""
    from finlora_utils.data.files import read_texts

    long = "revenue grew " * 20000   # 260 kB
    f = tmp_path / "long_train.csv"
    f.write_text(f'text,label\n"{long}",up\nshort one,down\nanother,up\nmore,down\n')
    assert read_texts(f)[0] == long
    t = data.register_files(f, max_labels=5)
    assert t.labels == ("down", "up")


def test_column_names_for_a_jsonl_train_file_are_refused_not_ignored():
    """train --train-file x.jsonl --label-column pillar trained on "target" without a word (validate refused it)."""
    with pytest.raises(ConfigError, match=r"text_column / label_column: only for a \.csv or \.tsv file; "
                                          r"support_train\.jsonl is read as JSONL"):
        data.register_files(SUPPORT_TRAIN, label_column="pillar")
    assert data.register_files(ESG_TRAIN, test=ESG_TEST, name="esg_cols", text_column="text").labels
