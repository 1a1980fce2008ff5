"""Check a user's data file: ``python -m finlora_utils.data validate FILE [--task TASK]``. A JSONL file in
FinLoRA format (context/target), or a CSV / TSV with a header naming a text and a label column, read by the
same rules as training reads it (data.files uses check_file and check_table).

Problems are printed as ``FILE:LINE: message`` (compiler style, one per line) on stderr; exit status 1 if
any error, 2 if the file cannot be read or the arguments are wrong, 0 otherwise with a summary on stdout.

Errors: not UTF-8, a UTF-8 byte-order mark, malformed JSON, a line that is not a JSON object, missing or
non-string or empty ``context``/``target``, a target outside the task's label set (with ``--task``),
an empty file. Warnings (errors with ``--strict``): a context not ending in ``"Answer: "`` (only checked
when the task - given or assumed - uses the Instruction/Input/Answer layout; FinLoRA's XBRL, formula and
financebench prompts end in ``"Answer:"``), blank lines, and duplicated contexts.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..config import DEFAULT_MAX_LABELS
from ..errors import cli_entry
from .tasks import PROMPT_ANSWER, get_task, normalize_label

MAX_SHOWN = 50
TEXT_COLUMNS = ("text", "sentence", "input")     # a CSV's text column, the first of these in its header
LABEL_COLUMNS = ("label", "target", "answer")
CSV_SUFFIXES = (".csv", ".tsv")


@dataclass
class Report:
    path: str
    rows: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)   # a CSV's texts (no prompt yet)
    targets: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)      # the line of each kept row
    text_name: str = "context"                          # what `contexts` holds: a table's are bare texts

    @property
    def ok(self) -> bool:
        return not self.errors

    def messages(self) -> list[str]:
        items = sorted([(ln, f"{msg}") for ln, msg in self.errors] +
                       [(ln, f"warning: {msg}") for ln, msg in self.warnings])
        return [f"{self.path}:{ln}: {msg}" for ln, msg in items]


def _typename(v) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(v), type(v).__name__)


def not_text(raw: bytes) -> str | None:
    """What a binary file most likely is, where a user handed the kit a spreadsheet instead of text; else None."""
    if raw.startswith(b"PK\x03\x04"):
        return "an Excel workbook (.xlsx) or another zip archive, not text; save it as CSV UTF-8 (Excel: Save As)"
    if raw.startswith(b"\xd0\xcf\x11\xe0"):
        return "an old Excel workbook (.xls), not text; save it as CSV UTF-8 (Excel: Save As)"
    return None


def _label_variants(rep: Report, warn: list) -> None:
    """Labels that differ only in case or surrounding space ('Up' / 'up ') are two classes to the kit: say so."""
    seen: dict[str, dict[str, int]] = {}   # folded label -> {spelling: its first line}
    for label, ln in zip(rep.targets, rep.lines):
        spellings = seen.setdefault(label.strip().casefold(), {})
        if label not in spellings:   # each further spelling is named once, however the rows alternate
            if spellings:
                other, at = next(iter(spellings.items()))
                warn.append((ln, f"label {label!r} differs from {other!r} (line {at}) only in case or spaces: they "
                                 "are two classes"))
            spellings[label] = ln


def check_file(path: str | Path, task: str | None = None, strict: bool = False) -> Report:
    """Validate ``path``; raises OSError if it cannot be read (the CLI reports that)."""
    t = get_task(task) if task else None
    rep = Report(str(path))
    raw = Path(path).read_bytes()
    if not_text(raw):
        rep.errors.append((1, not_text(raw)))
        return rep
    if not raw.strip():
        rep.errors.append((1, "file is empty (expected one JSON object per line)"))
        return rep
    check_answer = t is None or t.prompt_format == "instruction"
    warn = rep.errors if strict else rep.warnings
    seen: dict[str, int] = {}
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # final newline
    for ln, bline in enumerate(lines, 1):
        bline = bline.rstrip(b"\r")
        if ln == 1 and bline.startswith(b"\xef\xbb\xbf"):
            rep.errors.append((ln, "file starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM"))
            bline = bline[3:]
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            rep.errors.append((ln, f"not valid UTF-8 (byte 0x{bline[e.start]:02x} at column {e.start + 1}); "
                                   "save the file as UTF-8"))
            continue
        if not line.strip():
            warn.append((ln, "blank line"))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            rep.errors.append((ln, f"malformed JSON: {e.msg} (column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            rep.errors.append((ln, f"line is a JSON {_typename(obj)}, expected an object with "
                                   "\"context\" and \"target\""))
            continue
        rep.rows += 1
        bad = False
        for key in ("context", "target"):
            if key not in obj:
                # a table exported as JSON lines: say what reads it, once
                hint = ("; this line has \"text\" / \"label\": FinLoRA's format is {\"context\": prompt, \"target\": "
                        "answer}, a table of texts and labels reads as a CSV/TSV with a header") if (
                    "text" in obj and not any("has \"text\"" in m for _, m in rep.errors)) else ""
                rep.errors.append((ln, f"missing \"{key}\"{hint}"))
                bad = True
            elif not isinstance(obj[key], str):
                rep.errors.append((ln, f"\"{key}\" must be a string, got {_typename(obj[key])}"))
                bad = True
            elif not obj[key].strip():
                rep.errors.append((ln, f"\"{key}\" is empty"))
                bad = True
        for key, v in obj.items():
            if key not in ("context", "target") and not isinstance(v, (str, list)):
                warn.append((ln, f"extra field \"{key}\" is a {_typename(v)}"))
        if bad:
            continue
        ctx, tgt = obj["context"], obj["target"]
        if check_answer and not ctx.endswith(PROMPT_ANSWER):
            warn.append((ln, "context does not end with \"\\nAnswer: \" (FinLoRA's prompt ends "
                             f"\"...\\nAnswer: \"); it ends {ctx[-12:]!r}"))
        if t is not None and t.labels is not None and tgt not in t.labels:
            near = normalize_label(t.name, tgt)
            hint = f"; did you mean {near!r}?" if near else ""
            rep.errors.append((ln, f"target {tgt!r} is not a label of task {t.name} "
                                   f"({', '.join(t.labels)}){hint}"))
        if ctx in seen:
            warn.append((ln, f"duplicate context (first on line {seen[ctx]})"))
        else:
            seen[ctx] = ln
        rep.contexts.append(ctx)
        rep.targets.append(tgt)
        rep.lines.append(ln)
    _label_variants(rep, warn)
    if rep.rows == 0 and not rep.errors:
        rep.errors.append((1, "no JSON objects in the file"))
    return rep


def find_column(header: list[str], wanted: str | None, names: tuple[str, ...]) -> int | None:
    """Index of column `wanted` (any case), else of the first of `names` in the header; None if absent."""
    low = [h.strip().lower() for h in header]
    return next((low.index(n.lower()) for n in ([wanted] if wanted else names) if n.lower() in low), None)


def missing_column(header: list[str], wanted: str | None, names: tuple[str, ...], kind: str) -> str:
    expected = repr(wanted) if wanted else " or ".join(repr(n) for n in names)
    flag = f"; name it with --{kind}-column ({kind}_column=)"
    if len(header) == 1 and any(sep in header[0] for sep in ";|\t"):   # a spreadsheet's other list separator
        flag = ("; the header looks separated by another character: save as comma-separated CSV, or as .tsv with "
                "tabs")
    return f"no {kind} column {expected} in the header (columns: {', '.join(header)}){flag}"


def field_count_problem(row: list[str], header: list[str], first: int, last: int) -> tuple[int, str]:
    """(line, message) for a row with another field count than the header, at the line where it starts. A row that
    ran over several lines swallowed them in a quoted field: most likely a quote that is not closed."""
    msg = f"{len(row)} fields, the header has {len(header)}"
    if last > first and any("\n" in c for c in row):
        msg += f"; a quote opened on this line is not closed (the row runs to line {last})"
    return first, msg


def csv_reader(text: str, delimiter: str, strict: bool = False):
    """csv.reader over a file's text, without the csv module's 128 KiB field limit: a filing or a long memo is
    one legal field, and the limit's error ('field larger than field limit') named a line far from any fault."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=strict)


def open_quote_at_end(text: str, delimiter: str, first: int, last: int) -> tuple[int, str] | None:
    """(line, message) when the file ends inside a quoted field: a lost closing quote swallows every line after it
    into one field, which a field count cannot catch when the header has one column. first, last: the lines the
    file's last row spans; a row on one line is not checked (nothing was swallowed)."""
    if last <= first:
        return None
    row = "\n".join(text.split("\n")[first - 1:])   # from a row boundary: an earlier odd field cannot stop it first
    try:
        for _ in csv_reader(row, delimiter, strict=True):
            pass
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            return first, f"a quote opened on this line is not closed (the row runs to the end of the file, line {last})"
    return None


def check_table(path: str | Path, text_column: str | None = None, label_column: str | None = None,
                task: str | None = None, strict: bool = False) -> Report:
    """Validate a CSV (.tsv: tab-separated) with a header: a text and a label column (TEXT_COLUMNS /
    LABEL_COLUMNS unless named), no empty cell in them, every row as many fields as the header; Excel's UTF-8
    byte-order mark is accepted. Warnings (errors with strict): a repeated text, labels that differ only in
    case. The report's contexts are the texts. Raises OSError if it cannot be read."""
    t = get_task(task) if task else None
    path = Path(path)
    rep = Report(str(path), text_name="text")
    warn = rep.errors if strict else rep.warnings
    raw = path.read_bytes()
    if not_text(raw):
        rep.errors.append((1, not_text(raw)))
        return rep
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        rep.errors.append((line, f"not valid UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8"))
        return rep
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv_reader(text, delimiter)
    header = next(reader, None)
    if not header:
        rep.errors.append((1, "file is empty (expected a header row with a text and a label column)"))
        return rep
    ti, li = find_column(header, text_column, TEXT_COLUMNS), find_column(header, label_column, LABEL_COLUMNS)
    for i, wanted, names, kind in ((ti, text_column, TEXT_COLUMNS, "text"), (li, label_column, LABEL_COLUMNS, "label")):
        if i is None:
            rep.errors.append((1, missing_column(header, wanted, names, kind)))
    if rep.errors:
        return rep
    seen: dict[str, int] = {}
    try:
        end = reader.line_num
        for row in reader:
            ln, end = end + 1, reader.line_num   # a quoted field may span lines: a row is named by its first
            if not any(c.strip() for c in row):
                continue
            rep.rows += 1
            if len(row) != len(header):
                rep.errors.append(field_count_problem(row, header, ln, end))
                continue
            for i, name in ((ti, "text"), (li, "label")):
                if not row[i].strip():
                    rep.errors.append((ln, f"empty {name} ({header[i]!r})"))
            if not (row[ti].strip() and row[li].strip()):
                continue
            label = row[li].strip()
            if t is not None and t.labels is not None and label not in t.labels:
                near = normalize_label(t.name, label)
                hint = f"; did you mean {near!r}?" if near else ""
                rep.errors.append((ln, f"label {label!r} is not a label of task {t.name} "
                                       f"({', '.join(t.labels)}){hint}"))
            if row[ti] in seen:
                warn.append((ln, f"duplicate text (first on line {seen[row[ti]]})"))
            else:
                seen[row[ti]] = ln
            rep.contexts.append(row[ti])
            rep.targets.append(label)
            rep.lines.append(ln)
        if rep.lines and rep.lines[-1] == ln and (problem := open_quote_at_end(text, delimiter, ln, end)):
            rep.errors.append(problem)   # the last row took in the rest of the file: not a text to train on
            del rep.contexts[-1], rep.targets[-1], rep.lines[-1]
    except csv.Error as e:
        rep.errors.append((reader.line_num, f"malformed CSV: {e}"))
    _label_variants(rep, warn)
    if rep.rows == 0 and not rep.errors:
        rep.errors.append((2, "no data rows after the header"))
    distinct = sorted(set(rep.targets)) if not rep.errors else []
    if t is None and len(distinct) == 1:   # what train would refuse, said here too (of a file without errors)
        rep.warnings.append((rep.lines[0], f"every label is {distinct[0]!r}: training needs at least 2 labels "
                                           "(--max-labels 0 makes it a generated-answer task)"))
    elif t is None and len(distinct) > DEFAULT_MAX_LABELS:
        rep.warnings.append((rep.lines[0], f"{len(distinct)} distinct labels, more than {DEFAULT_MAX_LABELS}: training "
                                           "makes a generated-answer task, whose CSV rows need --instruction (or "
                                           f"--max-labels {len(distinct)} scores them as a label set)"))
    return rep


@lru_cache(maxsize=1)
def _tokenizer():
    from ..models import load_tokenizer

    return load_tokenizer("embedded")


def token_lengths(texts: list[str], use_tokenizer: bool = True) -> tuple[list[int], str]:
    """Token counts with the embedded SmolLM2 tokenizer, else whitespace word counts; (counts, unit)."""
    if use_tokenizer and texts:
        try:
            tok = _tokenizer()
            return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]], "tokens (embedded)"
        except Exception as e:  # noqa: BLE001 - any failure falls back, and says so
            print(f"note: embedded tokenizer unavailable ({type(e).__name__}: {str(e)[:120]}); "
                  "counting whitespace-separated words", file=sys.stderr)
    return [len(t.split()) for t in texts], "words (whitespace)"


def percentiles(values: list[int], ps=(50, 90, 95, 99, 100)) -> dict[int, int]:
    if not values:
        return {p: 0 for p in ps}
    s = sorted(values)
    return {p: s[min(len(s) - 1, max(0, -(-p * len(s) // 100) - 1))] for p in ps}  # nearest-rank


def summary(rep: Report, task: str | None = None, use_tokenizer: bool = True) -> str:
    t = get_task(task) if task else None
    lines = [f"{rep.path}: OK, {rep.rows} rows" + (f" for task {t.name}" if t else "")
             + (f", {len(rep.warnings)} warnings" if rep.warnings else "")]
    counts = Counter(rep.targets)
    if (t is not None and t.labels is not None) or (t is None and len(counts) <= 20):
        order = list(t.labels) if t is not None and t.labels else sorted(counts)
        lines.append("labels: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in order))
    else:
        lines.append(f"targets: {len(counts)} distinct")
    pairs = [c + x for c, x in zip(rep.contexts, rep.targets)]
    name = rep.text_name
    for name, texts in ((name, rep.contexts), ("target", rep.targets), (f"{name}+target", pairs)):
        n, unit = token_lengths(texts, use_tokenizer)
        pc = percentiles(n)
        lines.append(f"{name} length in {unit}: p50 {pc[50]}, p90 {pc[90]}, p95 {pc[95]}, p99 {pc[99]}, "
                     f"max {pc[100]}")
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    import argparse

    from .tasks import TASKS

    ap = argparse.ArgumentParser(prog="python -m finlora_utils validate",
                                 description="Check a JSONL file of {\"context\", \"target\"} rows in FinLoRA format, "
                                             "or a CSV / TSV with a text and a label column, as training reads it.")
    ap.add_argument("file")
    ap.add_argument("--task", choices=list(TASKS), help="also check targets against this task's label set")
    ap.add_argument("--text-column", default=None,
                    help=f"CSV/TSV: the text column (default: {' / '.join(TEXT_COLUMNS)})")
    ap.add_argument("--label-column", default=None,
                    help=f"CSV/TSV: the label column (default: {' / '.join(LABEL_COLUMNS)})")
    ap.add_argument("--no-tokens", action="store_true", help="count whitespace words, not tokenizer tokens")
    ap.add_argument("--strict", action="store_true", help="treat warnings as errors")
    args = ap.parse_args(argv)
    table = Path(args.file).suffix.lower() in CSV_SUFFIXES
    if not table and (args.text_column or args.label_column):
        ap.error("--text-column / --label-column: only for a .csv or .tsv file")
    try:
        rep = (check_table(args.file, args.text_column, args.label_column, args.task, args.strict) if table
               else check_file(args.file, args.task, args.strict))
    except OSError as e:
        print(f"error: {args.file}: cannot read file ({e.strerror or e})", file=sys.stderr)
        return 2
    msgs = rep.messages()
    for m in msgs[:MAX_SHOWN]:
        print(m, file=sys.stderr)
    if len(msgs) > MAX_SHOWN:
        print(f"{args.file}: ... and {len(msgs) - MAX_SHOWN} more", file=sys.stderr)
    if not rep.ok:
        print(f"{args.file}: {len(rep.errors)} error(s), {len(rep.warnings)} warning(s)", file=sys.stderr)
        return 1
    print(summary(rep, args.task, not args.no_tokens))
    return 0
