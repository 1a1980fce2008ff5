"""Tasks defined by files alone: a user's own JSONL (FinLoRA format) or CSV, registered beside the built-ins.

    from finlora_utils import data
    task = data.register_files("my_train.jsonl", test="my_test.jsonl")     # name from the file: "my"
    data.load_task(task.name, "train")                                       # then like any built-in task

JSONL rows are ``{"context": "Instruction: ...\\nInput: ...\\nAnswer: ", "target": "..."}`` (FinLoRA's
format, checked by data.validate). A CSV (or .tsv) has a header with a text column (text / sentence / input)
and a label column (label / target / answer); each row becomes ``format_prompt(instruction, text)``.

The label set is inferred from the train targets when there are at most ``max_labels`` distinct ones
(default 20): the task is then a classification task, scored by label likelihood. With more, it is a
generated-answer task (exact / numeric match). A test target outside the train label set is an error.
Without a test file the validation holdout (the same stratified 10 % as for built-in tasks) is the test
split and the train split leaves it out, so no test row is ever trained on.
"""
from __future__ import annotations

import csv
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..config import DEFAULT_MAX_LABELS, ConfigError, file_task_name
from . import tasks as registry
from .sources import sha256_file
from .tasks import Task, format_prompt, split_prompt
from .validate import (CSV_SUFFIXES, LABEL_COLUMNS, MAX_SHOWN, TEXT_COLUMNS, check_file, check_table,  # noqa: F401
                       csv_reader, field_count_problem, find_column, missing_column, not_text,
                       open_quote_at_end)
SOURCE = "file"     # the Dataset's `source` column for own data (built-ins: real | sample)


class FileTaskError(ConfigError):
    """A task file cannot be used; the message lists ``FILE:LINE: problem`` lines."""


@dataclass
class FileTask:
    task: Task
    train: list[dict]
    test: list[dict] | None         # None: the validation holdout of train is the test split
    provenance: dict


_FILES: dict[str, FileTask] = {}


def default_instruction(labels) -> str:
    """The prompt a CSV gets without an instruction: FinLoRA's sentiment wording, with the file's labels."""
    return f"What is the label of this text? Please choose an answer from {{{'/'.join(labels)}}}."


def _fail(path, problems: list[tuple[int, str]], what: str) -> FileTaskError:
    lines = [f"{path}:{ln}: {msg}" for ln, msg in problems[:MAX_SHOWN]]
    if len(problems) > MAX_SHOWN:
        lines.append(f"{path}: ... and {len(problems) - MAX_SHOWN} more")
    return FileTaskError(f"{what}={str(path)!r}: {len(problems)} error(s) in the file\n" + "\n".join(lines))


def _read_jsonl(path: Path, what: str) -> list[dict]:
    rep = check_file(path)     # the validator's checks: UTF-8, JSON objects, non-empty string context/target
    if not rep.ok:
        raise _fail(path, rep.errors, what)
    return [{"context": c, "target": t, "line": ln} for c, t, ln in zip(rep.contexts, rep.targets, rep.lines)]


def _read_csv(path: Path, text_column: str | None, label_column: str | None,
              what: str = "file") -> list[tuple[str, str, int]]:
    """[(text, label, line)] of a CSV/TSV with a header (the validator's check_table)."""
    rep = check_table(path, text_column, label_column)
    if not rep.ok:
        raise _fail(path, rep.errors, what)
    return list(zip(rep.contexts, rep.targets, rep.lines))


def _read(path, text_column, label_column, what: str) -> tuple[list[dict], str]:
    """(rows with context/target/line, format); CSV rows hold their text until the instruction is known."""
    path = Path(path)
    if not path.is_file():
        raise FileTaskError(f"{what}={str(path)!r}: no such file")
    try:
        if path.suffix.lower() in CSV_SUFFIXES:
            items = _read_csv(path, text_column, label_column, what)
            return [{"text": t, "target": lab, "line": ln} for t, lab, ln in items], "csv"
        return _read_jsonl(path, what), "jsonl"
    except OSError as e:
        raise FileTaskError(f"{what}={str(path)!r}: cannot read the file ({e.strerror or e})") from None


def _prompts(rows: list[dict], instruction: str) -> None:
    for r in rows:
        if "text" in r:
            r["context"] = format_prompt(instruction, r.pop("text"))


def _main_instruction(contexts: list[str]) -> str:
    """The most common instruction of FinLoRA-format contexts ('' if none are in that format)."""
    found = []
    for c in contexts:
        try:
            found.append(split_prompt(c)[0])
        except ValueError:
            pass
    return Counter(found).most_common(1)[0][0] if found else ""


def _plain(rows: list[dict]) -> list[dict]:
    return [{"context": r["context"], "target": r["target"]} for r in rows]


def _file_info(path: Path, split: str, fmt: str, rows: list[dict]) -> dict:
    return {"split": split, "path": str(path.resolve()), "sha256": sha256_file(path), "format": fmt,
            "rows": len(rows)}


def register_files(train, test=None, name: str | None = None, instruction: str | None = None,
                   max_labels: int = DEFAULT_MAX_LABELS, labels=None, text_column: str | None = None,
                   label_column: str | None = None) -> Task:
    """Register a task read from files; returns its Task (``task.name`` is what load_task, train and evaluate take).

    train / test: JSONL in FinLoRA format, or CSV/TSV with a text and a label column (test optional).
    name: default from the train file's name (``my_train.jsonl`` -> ``my``). instruction: the prompt
    instruction for CSV rows (default: a "choose an answer from {labels}" question). max_labels: the most
    distinct train targets that still make a classification task (0: always generated answers). labels: the
    label set, instead of inferring it. Raises FileTaskError (a ConfigError) naming the file and line.
    """
    if not isinstance(max_labels, int) or max_labels < 0:
        raise FileTaskError(f"max_labels={max_labels!r}: expected an integer >= 0 (0: never a label set)")
    name = file_task_name(str(train), name or "")
    if name in registry.TASKS:
        raise FileTaskError(f"task_name={name!r}: a built-in task has this name; give the file task another "
                            "name (task_name / --task-name)")
    if (text_column or label_column) and not any(Path(f).suffix.lower() in CSV_SUFFIXES for f in (train, test) if f):
        raise FileTaskError(f"text_column / label_column: only for a .csv or .tsv file; {Path(train).name} is read as "
                            "JSONL in FinLoRA's format (\"context\" and \"target\")")
    train_rows, train_fmt = _read(train, text_column, label_column, "train_file")
    test_rows, test_fmt = (_read(test, text_column, label_column, "test_file")
                           if test else (None, None))
    distinct = sorted({r["target"] for r in train_rows})
    inferred = labels is None
    if labels is not None:
        labels = tuple(str(x) for x in labels)
        bad = [(r["line"], f"target {r['target']!r} is not in labels ({', '.join(labels)})")
               for r in train_rows if r["target"] not in labels]
        if bad:
            raise _fail(train, bad, "train_file")
    elif 0 < len(distinct) <= max_labels:
        labels = tuple(distinct)
    if labels is not None and len(labels) < 2:
        raise FileTaskError(f"train_file={str(train)!r}: every target is {distinct[0]!r}; a classification task "
                            "needs at least 2 labels (max_labels=0 makes it a generated-answer task)")
    if any("text" in r for r in train_rows + (test_rows or [])) and not instruction:
        # CSV test rows beside a FinLoRA-format train file take the train prompts' instruction: scored with
        # another, they would test a prompt the adapter never saw
        instruction = _main_instruction([r["context"] for r in train_rows if "context" in r])
    if any("text" in r for r in train_rows + (test_rows or [])) and not instruction:
        if labels is None:
            raise FileTaskError(f"instruction=None: a CSV task with {len(distinct)} distinct targets (more than "
                                f"max_labels={max_labels}) needs an instruction for its prompts (--instruction); or "
                                f"--max-labels {len(distinct)} scores them as a label set")
        instruction = default_instruction(labels)
    _prompts(train_rows, instruction)
    overlap = []
    if test_rows is not None:
        _prompts(test_rows, instruction)
        trained = {r["context"] for r in train_rows}
        overlap = [r["line"] for r in test_rows if r["context"] in trained]
        if overlap:   # a leak a user should hear of: it inflates every test figure of the run
            warnings.warn(f"test_file={str(test)!r}: {len(overlap)} of {len(test_rows)} test rows are also in the "
                          f"train file (first on line {overlap[0]}); their test score measures memory", stacklevel=2)
        if labels is not None:
            unknown = sorted({r["target"] for r in test_rows} - set(labels))
            if unknown:
                first = {u: next(r["line"] for r in test_rows if r["target"] == u) for u in unknown}
                raise FileTaskError(
                    f"test_file={str(test)!r}: test labels not in the train label set: {', '.join(map(repr, unknown))} "
                    f"(first on line {', '.join(str(first[u]) for u in unknown)}); train labels: {', '.join(labels)}")
    contexts = [r["context"] for r in train_rows]
    native = _main_instruction(contexts) == "" or any(not c.endswith("\nAnswer: ") for c in contexts)
    task = Task(name=name, kind="classification" if labels else "generation", labels=labels, metric="accuracy",
                instruction=instruction or _main_instruction(contexts), test_file=str(Path(test or train).resolve()),
                has_train=True, description=f"own data from {Path(train).name}"
                + (f" and {Path(test).name}" if test else " (test: the validation holdout of train)"),
                prompt_format="native" if native else "instruction")
    prov = {"task": name, "files": [_file_info(Path(train), "train", train_fmt, train_rows)]
            + ([_file_info(Path(test), "test", test_fmt, test_rows)] if test else []),
            "labels": list(labels) if labels else None, "labels_inferred": bool(labels) and inferred,
            "max_labels": max_labels, "test": "file" if test else "validation holdout of train",
            "test_rows_in_train": len(overlap)}
    _FILES[name] = FileTask(task, _plain(train_rows), _plain(test_rows) if test_rows is not None else None, prov)
    registry.FILE_TASKS[name] = task
    return task


def register_config(config) -> Task | None:
    """Register the file task a TrainConfig (or its stored dict) names with train_file; None if it names none."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    if not get("train_file"):
        return None
    return register_files(get("train_file"), get("test_file") or None, get("task_name") or None,
                          get("instruction") or None, get("max_labels", DEFAULT_MAX_LABELS),
                          text_column=get("text_column") or None, label_column=get("label_column") or None)


def changed_files(stored: list[dict], names, splits=("train", "test")) -> list[dict]:
    """The files of `stored` (a run's run_info.data_files: one provenance per file task) in `splits` whose content
    differs from the registered task's file now, or which the task no longer reads; register the tasks first."""
    now = {f["path"]: f["sha256"] for p in provenance(names) for f in p["files"]}
    return [f for p in stored for f in p.get("files", [])
            if f.get("split") in splits and now.get(f.get("path")) != f.get("sha256")]


def register_run(run: dict) -> Task | None:
    """register_config for a finished run (its results dict), refusing a train file whose content is no longer what
    the run trained on: its labels and instruction made the adapter's prompts, so predictions and scores against
    the file as it is now could use a label set the adapter never saw. A changed test file is fine (evaluation
    reads it as it is and records its sha256)."""
    info = run.get("run_info") or {}
    cfg = info.get("config") or {}
    task = register_config(cfg)
    stored = info.get("data_files")
    if task is None or not isinstance(stored, list):
        return task
    changed = changed_files(stored, cfg.get("tasks") or [task.name], splits=("train",))
    if changed:
        raise FileTaskError(f"train_file={changed[0]['path']!r}: changed since run {run.get('run_id')} trained on it "
                            f"(sha256 {changed[0]['sha256'][:12]}..., now another); its labels and instruction made "
                            "the adapter's prompts: restore the file, or retrain on it (train ... --force)")
    return task


def is_file_task(name: str) -> bool:
    return name in _FILES


def file_rows(name: str) -> tuple[list[dict], list[dict] | None]:
    """(train rows, test rows or None) of a registered file task."""
    ft = _FILES[name]
    return ft.train, ft.test


def provenance(names) -> list[dict]:
    """Data provenance (paths, sha256, rows, label set) of the file tasks among ``names``."""
    if isinstance(names, str):
        names = [names]
    return [_FILES[n].provenance for n in names if n in _FILES]


def read_texts(path, text_column: str | None = None, with_fields: bool = False):
    """Texts to label (predict): a JSONL of objects with "text" (or a FinLoRA "context"), or a CSV/TSV with a
    text column, or plain text with one input per line (.txt). A row or object without text is an error naming
    its line (dropping it would misalign the output with the input). with_fields: (texts, the other columns /
    keys of each row), so the output can carry an id back."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileTaskError(f"file={str(path)!r}: no such file")
    raw = path.read_bytes()
    if not_text(raw):
        raise _fail(path, [(1, not_text(raw))], "file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise _fail(path, [(line, f"not valid UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8")],
                    "file") from None
    texts, fields, problems = [], [], []
    if path.suffix.lower() in CSV_SUFFIXES:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv_reader(text, delimiter)
        header = next(reader, None) or []
        i = find_column(header, text_column, TEXT_COLUMNS)
        if i is None:
            raise _fail(path, [(1, missing_column(header, text_column, TEXT_COLUMNS, "text"))], "file")
        end = last_kept = reader.line_num
        ln = end
        try:
            for row in reader:
                ln, end = end + 1, reader.line_num   # a quoted field may span lines: a row is named by its first
                if not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):   # a lost quote or comma: say so rather than label a shifted row
                    problems.append(field_count_problem(row, header, ln, end))
                elif not row[i].strip():
                    problems.append((ln, f"empty text in column {header[i]!r}"))
                else:
                    texts.append(row[i])
                    fields.append({h: v for j, (h, v) in enumerate(zip(header, row)) if j != i})
                    last_kept = ln
        except csv.Error as e:
            raise _fail(path, problems + [(end + 1, f"malformed CSV: {e}")], "file") from None
        if texts and last_kept == ln and (problem := open_quote_at_end(text, delimiter, ln, end)):
            problems.append(problem)   # the last row took in the rest of the file: not a text to label
    elif path.suffix.lower() == ".txt":
        texts = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
        fields = [{} for _ in texts]
    else:
        key = text_column or "text"
        for ln, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append((ln, f"malformed JSON: {e.msg} (column {e.colno})"))
                continue
            v = obj.get(key, obj.get("context")) if isinstance(obj, dict) else None
            if not isinstance(v, str) or not v.strip():
                problems.append((ln, f"expected an object with a non-empty string {key!r} (or \"context\")"))
            else:
                texts.append(v)
                fields.append({k: x for k, x in obj.items() if k not in (key, "context")})
    if problems:
        raise _fail(path, problems, "file")
    return (texts, fields) if with_fields else texts


def task_list(tasks, train_file: str = "", test_file: str = "", task_name: str = "", instruction: str = "",
              max_labels: int = DEFAULT_MAX_LABELS) -> tuple[str, ...]:
    """The tasks a notebook works on (TrainConfig's rule): with train_file, its task is registered and replaces
    `tasks` unless they list it beside built-in ones."""
    names = tuple(t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks or ()) if t.strip())
    if not train_file:
        return names
    name = register_files(train_file, test_file or None, task_name or None, instruction or None, max_labels).name
    return names if name in names else (name,)
