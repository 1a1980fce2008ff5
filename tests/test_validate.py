"""``python -m finlora_utils.data validate FILE [--task TASK]``."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from finlora_utils.data import format_prompt
from finlora_utils.data.__main__ import main as cli
from finlora_utils.data.validate import percentiles

INSTR = "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}."


def row(text="Profit rose .", target="positive", **extra):
    return json.dumps({"context": format_prompt(INSTR, text), "target": target, **extra}, ensure_ascii=False)


GOOD = [row("Profit rose 5 % .", "positive"), row("Sales fell .", "negative"), row("AGM on May 2 .", "neutral"),
        row("Margins improved .", "positive")]


def write(tmp_path, content, name="f.jsonl"):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return p


def run(capsys, *args):
    rc = cli(["validate", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_good_file_summary(tmp_path, capsys):
    p = write(tmp_path, "\n".join(GOOD) + "\n")
    rc, out, err = run(capsys, p, "--task", "fpb", "--no-tokens")
    assert rc == 0 and err == ""
    assert f"{p}: OK, 4 rows for task fpb" in out
    assert "labels: negative 1, neutral 1, positive 2" in out
    assert "context length in words (whitespace): p50 " in out and "max " in out


def test_good_file_with_embedded_tokenizer(tmp_path, capsys):
    p = write(tmp_path, "\n".join(GOOD) + "\n")
    rc, out, err = run(capsys, p)
    assert rc == 0
    # embedded tokenizer when it loads; otherwise a note and whitespace counts (graceful fallback)
    assert "context length in tokens (embedded)" in out or ("word" in out and "tokenizer unavailable" in err)


@pytest.mark.parametrize("content, args, line, message", [
    (GOOD[0] + "\n{\"context\": \"x\", \"target\": \n", [], 2, "malformed JSON: Expecting value (column 28)"),
    (json.dumps({"target": "positive"}) + "\n", [], 1, 'missing "context"'),
    (GOOD[0] + "\n" + row(target="  ") + "\n", [], 2, '"target" is empty'),
    (row(target="bullish") + "\n", ["--task", "fpb"], 1,
     "target 'bullish' is not a label of task fpb (negative, neutral, positive)"),
    (row(target="Positive") + "\n", ["--task", "fpb"], 1,
     "target 'Positive' is not a label of task fpb (negative, neutral, positive); did you mean 'positive'?"),
    (GOOD[0].encode() + b"\n" + row("Caf\u00e9").encode("latin-1") + b"\n", [], 2,
     "not valid UTF-8 (byte 0xe9 at column 132); save the file as UTF-8"),
    ("", [], 1, "file is empty (expected one JSON object per line)"),
    ("\n\n", [], 1, "file is empty (expected one JSON object per line)"),
    ('["context", "target"]\n', [], 1, 'line is a JSON array, expected an object with "context" and "target"'),
    ("42\n", [], 1, 'line is a JSON number, expected an object with "context" and "target"'),
    (json.dumps({"context": format_prompt(INSTR, "x"), "target": 1}) + "\n", [], 1,
     '"target" must be a string, got number'),
    (json.dumps({"context": ["a"], "target": "positive"}) + "\n", [], 1, '"context" must be a string, got array'),
    (b"\xef\xbb\xbf" + GOOD[0].encode() + b"\n", [], 1,
     "file starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM"),
    (GOOD[0] + "\n" + json.dumps({"context": "Instruction: x\nInput: y\nAnswer:", "target": "positive"}) + "\n",
     ["--strict"], 2, "context does not end with \"\\nAnswer: \" (FinLoRA's prompt ends \"...\\nAnswer: \"); "
                      "it ends 't: y\\nAnswer:'"),
])
def test_bad_input_exact_message(tmp_path, capsys, content, args, line, message):
    p = write(tmp_path, content)
    rc, out, err = run(capsys, p, "--no-tokens", *args)
    assert rc == 1, err
    assert f"{p}:{line}: {message}\n" in err
    assert out == ""


def test_answer_suffix_is_a_warning_by_default_and_skipped_for_native_tasks(tmp_path, capsys):
    p = write(tmp_path, json.dumps({"context": "Explain this XBRL term briefly in one sentence: Assets. Answer:",
                                    "target": "Total assets."}) + "\n")
    rc, out, err = run(capsys, p, "--no-tokens")
    assert rc == 0 and f"{p}:1: warning: context does not end with" in err
    rc, out, err = run(capsys, p, "--no-tokens", "--task", "xbrl_term")
    assert rc == 0 and err == "" and "targets: 1 distinct" in out


def test_duplicate_context_warns(tmp_path, capsys):
    p = write(tmp_path, GOOD[0] + "\n" + GOOD[0] + "\n")
    rc, out, err = run(capsys, p, "--no-tokens")
    assert rc == 0 and f"{p}:2: warning: duplicate context (first on line 1)" in err


def test_missing_file_and_unknown_task_no_traceback(tmp_path, capsys):
    p = tmp_path / "absent.jsonl"
    rc, out, err = run(capsys, p)
    assert rc == 2 and err == f"error: {p}: cannot read file (No such file or directory)\n"
    rc, out, err = run(capsys, tmp_path)  # a directory
    assert rc == 2 and f"{tmp_path}: cannot read file" in err
    with pytest.raises(SystemExit) as e:
        cli(["validate", str(p), "--task", "nope"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_many_errors_are_all_reported_with_line_numbers(tmp_path, capsys):
    p = write(tmp_path, "\n".join([GOOD[0], "{", "[]", GOOD[1], json.dumps({"context": "", "target": "x"})]) + "\n")
    rc, out, err = run(capsys, p, "--no-tokens")
    lines = err.splitlines()
    assert rc == 1 and [ln.split(":")[1] for ln in lines[:3]] == ["2", "3", "5"]
    assert lines[-1] == f"{p}: 3 error(s), 0 warning(s)"


def test_percentiles_nearest_rank():
    assert percentiles(list(range(1, 101))) == {50: 50, 90: 90, 95: 95, 99: 99, 100: 100}
    assert percentiles([7]) == {50: 7, 90: 7, 95: 7, 99: 7, 100: 7}
    assert percentiles([]) == {50: 0, 90: 0, 95: 0, 99: 0, 100: 0}


def test_module_entry_point(tmp_path):
    bad = write(tmp_path, "not json\n")
    r = subprocess.run([sys.executable, "-m", "finlora_utils.data", "validate", str(bad), "--no-tokens"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith(f"{bad}:1: malformed JSON: Expecting value (column 1)")
    assert "Traceback" not in r.stderr


def test_tokenizer_failure_falls_back_to_words(tmp_path, capsys, monkeypatch):
    from finlora_utils.data import validate

    def broken():
        raise OSError("no model files")

    monkeypatch.setattr(validate, "_tokenizer", broken)
    p = write(tmp_path, "\n".join(GOOD) + "\n")
    rc, out, err = run(capsys, p)
    assert rc == 0 and "context length in words (whitespace)" in out
    assert "embedded tokenizer unavailable (OSError: no model files)" in err


def test_a_csv_is_checked_as_training_reads_it(tmp_path, capsys):
    """validate reads a CSV / TSV with the same rules as train and evaluate (data.files uses check_table)."""
    good = write(tmp_path, "id,sentence,label\n1,Profit rose 5 %.,positive\n2,\"Sales fell, again.\",negative\n",
                 "good.csv")
    rc, out, err = run(capsys, good, "--no-tokens", "--task", "fpb")
    assert rc == 0 and out.startswith(f"{good}: OK, 2 rows for task fpb") and "negative 1, neutral 0, positive 1" in out
    assert "text length in words" in out and "context" not in out   # a CSV holds bare texts, not prompts
    tsv = write(tmp_path, "text\tanswer\nProfit rose.\tup\n", "good.tsv")
    assert run(capsys, tsv, "--no-tokens")[0] == 0
    bad = write(tmp_path, "sentence,label\nProfit rose.,positive\nSales fell.,\nA,b,c\nMargins up.,bullish\n",
                "bad.csv")
    rc, out, err = run(capsys, bad, "--no-tokens", "--task", "fpb")
    assert rc == 1 and err.splitlines() == [f"{bad}:3: empty label ('label')", f"{bad}:4: 3 fields, the header has 2",
                                            f"{bad}:5: label 'bullish' is not a label of task fpb "
                                            "(negative, neutral, positive)", f"{bad}: 3 error(s), 0 warning(s)"]
    renamed = write(tmp_path, "headline,sentiment\nProfit rose.,positive\n", "renamed.csv")
    rc, out, err = run(capsys, renamed, "--no-tokens")
    assert rc == 1 and f"{renamed}:1: no text column 'text' or 'sentence' or 'input'" in err
    assert run(capsys, renamed, "--no-tokens", "--text-column", "headline", "--label-column", "sentiment")[0] == 0
    with pytest.raises(SystemExit) as e:
        cli(["validate", str(write(tmp_path, "\n".join(GOOD) + "\n")), "--text-column", "x"])
    assert e.value.code == 2 and "only for a .csv or .tsv file" in capsys.readouterr().err


def test_an_unclosed_quote_is_named_where_it_opens_and_another_separator_is_recognised(tmp_path, capsys):
    """The row with the lost quote swallows the lines after it; it used to be reported at the file's last line."""
    bad = write(tmp_path, 'sentence,label\n"Profit rose,positive\nSales fell,negative\nFlat year,neutral\n', "q.csv")
    rc, out, err = run(capsys, bad, "--no-tokens")
    assert rc == 1 and err.splitlines()[0] == (f"{bad}:2: 1 fields, the header has 2; a quote opened on this line "
                                               "is not closed (the row runs to line 4)")
    multi = write(tmp_path, 'sentence,label\n"Profit rose\nagain",positive\nSales fell,\n', "m.csv")
    rc, out, err = run(capsys, multi, "--no-tokens")   # a legal two-line row: the next row keeps its own line
    assert rc == 1 and err.splitlines()[0] == f"{multi}:4: empty label ('label')"
    # the last row's lost quote swallows the rest with the header's field count: caught by the file ending inside it
    tail = write(tmp_path, 'sentence,label\nProfit rose,positive\nSales fell,"negative\nFlat year,neutral\n', "t.csv")
    rc, out, err = run(capsys, tail, "--no-tokens")
    assert rc == 1 and err.splitlines()[0] == (f"{tail}:3: a quote opened on this line is not closed (the row runs "
                                               "to the end of the file, line 4)")
    from finlora_utils.data.files import read_texts
    one = write(tmp_path, 'text\nLoan approved.\n"Card blocked.\nRate cut.\n', "one.csv")
    with pytest.raises(ValueError, match=r"one.csv:3: a quote opened on this line is not closed"):
        read_texts(one)   # one column: no field count to catch it, the whole tail was one text to label
    assert read_texts(write(tmp_path, 'text\n"Card\nblocked."\nRate cut.\n', "two.csv")) == ["Card\nblocked.",
                                                                                                  "Rate cut."]
    semi = write(tmp_path, "sentence;sentiment\nProfit rose;positive\n", "s.csv")
    rc, out, err = run(capsys, semi, "--no-tokens")
    assert rc == 1 and "the header looks separated by another character: save as comma-separated CSV" in err


def test_an_open_quote_in_the_last_row_is_found_after_an_odd_but_accepted_field(tmp_path):
    """A strict parse of the whole file stopped at an earlier '"Loan" approved.' (which the reader accepts) and
    never reached the last row's unclosed quote."""
    from finlora_utils.data.files import read_texts

    f = tmp_path / "odd.csv"
    f.write_text('text\n"Loan" approved.\n"Card blocked.\nRate cut.\n')
    with pytest.raises(ValueError, match=r"odd.csv:3: a quote opened on this line is not closed"):
        read_texts(f)


def test_validate_says_what_training_would_refuse_and_how_a_misread_file_reads(tmp_path):
    """validate passed a one-label CSV and a 30-label CSV without an instruction, both refused by train; a JSONL of
    text / label got one 'missing context' per line with no word on CSV; a tab-separated .csv had no hint."""
    from finlora_utils.data.validate import check_file, check_table

    one = tmp_path / "one.csv"
    one.write_text("text,label\na,x\nb,x\n")
    assert check_table(one).warnings == [(2, "every label is 'x': training needs at least 2 labels (--max-labels 0 "
                                             "makes it a generated-answer task)")]
    many = tmp_path / "many.csv"
    many.write_text("text,label\n" + "".join(f"t{i},l{i}\n" for i in range(30)))
    assert "30 distinct labels, more than 20" in check_table(many).warnings[0][1]
    tl = tmp_path / "tl.jsonl"
    tl.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    msgs = [m for _, m in check_file(tl).errors]
    assert sum("a table of texts and labels reads as a CSV/TSV" in m for m in msgs) == 1 and len(msgs) == 4
    tabs = tmp_path / "tabs.csv"
    tabs.write_text("text\tlabel\na\tx\n")
    assert "the header looks separated by another character" in check_table(tabs).errors[0][1]
    named = tmp_path / "named.csv"
    named.write_text("memo,pillar\na,x\n")
    assert "name it with --text-column (text_column=)" in check_table(named).errors[0][1]
