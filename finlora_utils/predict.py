"""Label new text with a finetuned model: the label and every label's probability, batched.

    from finlora_utils import predict
    p = predict.load("reports/results/bank_smollm2-135m_4bit_r4.json")       # a run: adapter + its task
    p.predict(["Loan approved after review.", "Credit line cut."])
    # [{"text": ..., "label": "approve", "probs": {"approve": 0.91, "reject": 0.09}}, ...]

    python -m finlora_utils predict RUN.json "Loan approved after review." "Credit line cut."
    python -m finlora_utils predict ADAPTER_DIR --model embedded --task fpb --file new.csv --out labelled.jsonl
    python -m finlora_utils predict MERGED_DIR --labels approve,reject --instruction "..." --file new.jsonl

The source is a results JSON of a training run (adapter, base model, precision and task from the run), an
adapter folder (base model from --model, else the base its card names, as merge reads it) or a model folder /
name (a merged model is a plain transformers folder). Probabilities are the softmax over the labels of the
log-likelihoods `evaluate`'s score protocol ranks (evaluate.label_probabilities), so predict's label is the
label evaluation would have predicted for the same prompt. A text is wrapped as FinLoRA's prompt
``Instruction: {instruction}\\nInput: {text}\\nAnswer: `` unless it already is one.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError
from .errors import cli_entry

PROMPT_START, PROMPT_END = "Instruction: ", "Answer: "


@dataclass
class Predictor:
    model: object
    tokenizer: object
    labels: list[str]
    instruction: str
    batch_size: int = 8
    max_len: int | None = None
    source: dict = field(default_factory=dict)   # what was loaded: run, adapter, model, precision, task

    def prompts(self, texts) -> list[str]:
        from .data import format_prompt

        return [t if t.startswith(PROMPT_START) and t.endswith(PROMPT_END) else format_prompt(self.instruction, t)
                for t in texts]

    def predict(self, texts) -> list[dict]:
        """[{"text", "label", "probs": {label: probability}}] for each text, in order."""
        from .scoring import label_probabilities

        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return []
        probs = label_probabilities(self.model, self.tokenizer, self.prompts(texts), self.labels, self.batch_size,
                                    self.max_len)
        return [{"text": t, "label": self.labels[int(row.argmax())],
                 "probs": {lab: round(float(p), 6) for lab, p in zip(self.labels, row)}}
                for t, row in zip(texts, probs)]

    def frame(self, texts):
        """The predictions as a pandas DataFrame: text, label, then one probability column per label."""
        import pandas as pd

        return pd.DataFrame([{"text": r["text"], "label": r["label"], **r["probs"]} for r in self.predict(texts)])


def _label_set(task: str | None, labels, instruction: str | None) -> tuple[list[str], str, str | None]:
    from . import data
    from .data.files import default_instruction

    if isinstance(labels, str):
        labels = [x.strip() for x in labels.split(",") if x.strip()]
    if labels:
        if len(labels) < 2:
            raise ConfigError(f"labels={labels!r}: expected at least two labels")
        twice = sorted({x for x in labels if list(labels).count(x) > 1})
        if twice:   # a repeated label would split its probability and show one of the halves
            raise ConfigError(f"labels={labels!r}: {', '.join(twice)} given more than once; expected distinct labels")
        return list(labels), instruction or default_instruction(labels), task
    if not task:
        raise ConfigError("task: expected a task (--task), a label set (--labels) or a results JSON of a run on one "
                          "task, to know which labels to score")
    t = data.get_task(task)
    if not t.labels:
        raise ConfigError(f"task={task!r}: a generated-answer task has no label set to score; give --labels")
    return list(t.labels), instruction or t.instruction, task


def _recorded_task(folder: Path, task: str | None, labels, instruction: str | None):
    """(labels, instruction, task) from the folder's task record (artifacts.TASK_FILE) when it settles them: the
    one classification task it holds, or --task among its tasks; else the arguments unchanged."""
    from .artifacts import read_task_record

    rec = read_task_record(folder) if folder.is_dir() else None
    if rec is None:
        return labels, instruction, task
    tasks = {k: v for k, v in rec["tasks"].items() if v.get("labels")}
    from . import data

    if task is not None and task not in rec["tasks"] and data.is_file_task(task):
        # another own-data task (--train-file of another name) would score with a prompt the model never saw
        raise ConfigError(f"task {task!r} (a file task) is not one {folder} was trained on "
                          f"({', '.join(rec['tasks'])}); its labels and instruction are recorded there: drop "
                          "--train-file, or choose one of those with --task")
    if task is None and len(tasks) == 1:
        task = next(iter(tasks))
    if task in tasks:   # the adapter's own label set, even where a task of that name now reads otherwise
        return tasks[task]["labels"], instruction or tasks[task]["instruction"], task
    if task is None and len(tasks) > 1:
        raise ConfigError(f"task: {folder} was trained on {', '.join(tasks)}; choose one with --task")
    return labels, instruction, task


def load(source: str | Path, model: str | None = None, precision: str | None = None, task: str | None = None,
         labels=None, instruction: str | None = None, batch_size: int = 8, max_len: int | None = None) -> Predictor:
    """A Predictor from a run's results JSON, an adapter folder, or a model (merged folder or name)."""
    from . import data
    from .models import load_model

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: expected an integer >= 1")
    src = Path(source)
    info: dict = {"source": str(source)}
    adapter = None
    looks_local = src.is_absolute() or str(source).startswith(".") or src.suffix == ".json" or len(src.parts) > 2
    if looks_local and not src.exists():   # a hub id is org/name; anything else that is missing is a typo
        raise ConfigError(f"source={str(source)!r}: no such file or folder; expected a run's results JSON, an adapter "
                          "folder (adapter_config.json) or a model folder / hub id")
    if src.suffix == ".json" and src.is_file():
        from .artifacts import read_task_record
        from .evaluate import run_adapter_dir
        from .results import read_result

        run = read_result(src, require=("run_info.config.model", "train_info.adapter_path"))
        cfg = run["run_info"]["config"]
        gone = cfg.get("train_file") and not Path(cfg["train_file"]).is_file()
        record = read_task_record(run_adapter_dir(src)) if gone else None
        if not (record and set(cfg.get("tasks") or []) <= set(record["tasks"])):
            data.register_run(run)   # own data brings its task (and label set) back from its files, unchanged
        # else: the train file moved, and the adapter's task record holds its labels and instruction
        model = model or cfg["model"]
        precision = precision or cfg["precision"]
        if not task and len(cfg.get("tasks") or []) == 1:
            task = cfg["tasks"][0]
        elif not task and not labels:
            raise ConfigError(f"task: the run {src.name} was trained on {', '.join(cfg['tasks'])}; choose one with --task")
        adapter = run_adapter_dir(src)
    elif (src / "adapter_config.json").is_file():
        adapter = src
        if not model:   # the base as the kit names it: an embedded-trained adapter records the hub id, not `embedded`
            from .merge import adapter_base

            model = adapter_base(src)
    else:
        if model:
            raise ConfigError(f"model={model!r}: only with an adapter or a run; {source} is itself the model")
        model = str(source)
    if adapter is not None:
        from .artifacts import safetensors_adapter

        safetensors_adapter(adapter)   # before the base model loads: a refused adapter fails at once
    if not labels:   # an adapter or merged-model folder names the tasks it was trained on, with their prompts
        labels, instruction, task = _recorded_task(adapter or Path(str(source)), task, labels, instruction)
    labels, instruction, task = _label_set(task, labels, instruction)
    base, tok = load_model(model, precision=precision or "auto")
    if adapter is not None:
        from .artifacts import attach_adapter

        base = attach_adapter(base, adapter, model, is_trainable=False)
    base.eval()
    info.update(model=model, adapter=str(adapter) if adapter else None, precision=precision or "auto", task=task)
    return Predictor(base, tok, labels, instruction, batch_size, max_len, info)


def compare(result_paths, texts, task: str, batch_size: int = 8, precision: str | None = None):
    """Each run trained on `task` labels the same texts: a DataFrame with run_id, text, label and one
    probability column per label (a notebook's look at what the adapters do with new sentences)."""
    import pandas as pd

    from . import data
    from .results import read_result

    frames = []
    for p in result_paths:
        if not data.get_task(task).labels:   # a generated-answer task has no labels to give probabilities for
            break
        r = read_result(p, require=("run_id", "run_info.config.tasks"))
        if task not in r["run_info"]["config"]["tasks"]:
            continue
        pred = load(p, task=task, batch_size=batch_size, precision=precision)
        frames.append(pred.frame(texts).assign(run_id=r["run_id"]))
        del pred
    if not frames:
        return pd.DataFrame(columns=["run_id", "text", "label"])
    out = pd.concat(frames, ignore_index=True)
    return out[["run_id"] + [c for c in out.columns if c != "run_id"]]


def with_input_fields(row: dict, fields: dict) -> dict:
    """A prediction with its input row's other columns first (an id to join back on); an input column whose name
    the prediction uses (a gold 'label', 'text') is kept as 'input_<name>'."""
    taken = {"text", "label", "probs", *row["probs"]}
    return {**{(f"input_{k}" if k in taken else k): v for k, v in fields.items()}, **row}


OUT_SUFFIXES = (".jsonl", ".csv", ".tsv")


def check_out(path: str | Path) -> Path:
    """The predictions file a user named, refused before any model loads when it cannot be written as asked."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"out={str(path)!r}: is a folder; expected a file to write ({', '.join(OUT_SUFFIXES)})")
    if path.suffix.lower() not in OUT_SUFFIXES:
        raise ConfigError(f"out={str(path)!r}: expected a file ending in {', '.join(OUT_SUFFIXES)} (JSONL, or a table "
                          "with one probability column per label)")
    return path


def write_predictions(rows: list[dict], path: str | Path) -> Path:
    """JSONL (one prediction per line), or for a .csv / .tsv path a table with the input's other columns, the text,
    the label and one probability column per label."""
    from .results import atomic_write_text

    path = check_out(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        import pandas as pd

        def cell(v):   # a JSONL input's nested field stays JSON in a table, not Python's repr
            return json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v

        frame = pd.DataFrame([{**{k: cell(v) for k, v in r.items() if k != "probs"}, **r["probs"]} for r in rows])
        return atomic_write_text(path, frame.to_csv(index=False, sep="\t" if path.suffix.lower() == ".tsv" else ","))
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    import argparse

    from . import data
    from .data.files import read_texts

    ap = argparse.ArgumentParser(prog="python -m finlora_utils predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="results JSON of a run, an adapter folder, or a model folder / name")
    ap.add_argument("texts", nargs="*", help="texts to label")
    ap.add_argument("--file", default=None, help="texts from a JSONL ('text' or 'context'), CSV/TSV (text column) or .txt")
    ap.add_argument("--text-column", default=None, help="CSV column / JSON key of the text (default: text, sentence "
                                                         "or input in a CSV; text or context in JSONL)")
    ap.add_argument("--model", default=None, help="base model of an adapter folder (kit name or path)")
    ap.add_argument("--precision", default=None, help="default: the run's training precision, else auto")
    ap.add_argument("--task", default=None, help="task whose labels and instruction to use (default: the run's)")
    ap.add_argument("--train-file", default=None, help="own data: register this file's task (its labels), for a "
                                                        "source that does not record the task it was trained on")
    ap.add_argument("--labels", default=None, help="comma-separated label set (instead of a task)")
    ap.add_argument("--instruction", default=None, help="prompt instruction (default: the task's)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=None, help="truncate longer prompts' input text to this many tokens")
    ap.add_argument("--out", default=None, help="write predictions here (.jsonl, .csv or .tsv) instead of stdout")
    ns = ap.parse_intermixed_args(argv)   # texts may follow the options
    try:
        texts, fields = read_texts(ns.file, ns.text_column, with_fields=True) if ns.file else ([], [])
        texts, fields = list(ns.texts) + texts, [{}] * len(ns.texts) + fields
        if not texts:
            raise ConfigError("texts: expected texts to label (arguments or --file)")
        if ns.out:   # found out before the model loads, not after the predictions
            check_out(ns.out)
        task = ns.task
        if ns.train_file:
            task = task or data.register_files(ns.train_file, instruction=ns.instruction).name
        p = load(ns.source, ns.model, ns.precision, task, ns.labels, ns.instruction, ns.batch_size, ns.max_len)
        rows = [with_input_fields(r, f) for r, f in zip(p.predict(texts), fields)]
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ns.out:
        print(write_predictions(rows, ns.out))
    else:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
