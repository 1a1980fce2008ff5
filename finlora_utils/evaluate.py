"""Evaluate a (finetuned) model on FinLoRA tasks with protocols that cannot be fooled.

Modes (same metrics for all):
  score      rank the task's labels by the model's log-likelihood of each label continuation given
             the prompt; no parsing, so no parsing luck. Default for classification tasks.
  calibrated score, then divide out the label prior the prompt alone induces (contextual calibration
             with content-free inputs, Zhao et al. 2021, "Calibrate Before Use"). For zero-shot bases.
  generate   the paper's protocol: greedy decoding, max_new_tokens=10, the first label word found in
             the output; outputs with no label word are counted wrong and reported as `unparseable`.

Scoring uses, by default, exactly the tokens training used (prompt tokenized whole, then the label
tokenized alone: finlora_utils.tokenization), which are also the tokens `generate` continues from;
boundary="joint" scores prompt+label tokenized as one string instead (natural text for a base model).

Every result carries the predicted-label distribution and the majority-class baseline, so a
degenerate model (one label for everything) is visible beside its accuracy. Metrics come from
scikit-learn with (y_true, y_pred) in that order: FinLoRA's 2024 code had them swapped.

The metrics (metrics.py) and the ways of asking a model (scoring.py) live in their own modules; their
public names are re-exported here, so `evaluate.score_labels` and friends keep working.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence


from .errors import cli_entry
from .metrics import (EvalError, FINLORA_DELIMITER, UNPARSEABLE, classification_metrics,  # noqa: F401
                      collapse_nwgi, extraction_metrics, f1_weighted_finlora, finlora_response, gold_number,
                      parse_number)
from .scoring import (BOUNDARIES, CLS_MAX_NEW_TOKENS, CONTENT_FREE, EXTRACT_MAX_NEW_TOKENS,  # noqa: F401
                      MIN_EXTRA_PREFIX, calibrate, generate_texts, label_probabilities, parse_label, prompt_ids,
                      quiet_bnb_int8, score_labels, split_label_tokens)

MODES = ("score", "generate", "calibrated")


def _rows(dataset) -> tuple[list[str], list[str], str | None, str | None]:
    """(prompts, targets, task, data source) from a Dataset or a list of dicts."""
    if hasattr(dataset, "column_names"):
        cols = dataset.column_names
        missing = [c for c in ("context", "target") if c not in cols]
        if missing:
            raise EvalError(f"dataset: missing column {missing[0]!r}; expected columns context, target[, task]")
        ctx, tgt = list(dataset["context"]), list(dataset["target"])
        task = dataset["task"][0] if "task" in cols and len(dataset) else None
        src = set(dataset["source"]) if "source" in cols else set()
        return ctx, tgt, task, (src.pop() if len(src) == 1 else ("mixed" if src else None))
    rows = list(dataset)
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "context" not in r or "target" not in r:
            raise EvalError(f"dataset[{i}]: expected a dict with 'context' and 'target'")
    first = rows[0] if rows else {}
    return [r["context"] for r in rows], [r["target"] for r in rows], first.get("task"), first.get("source")


def _task_info(task: str | None, labels) -> tuple[list[str], str, str]:
    """(labels, kind, metric) from the data registry, or from the caller for ad-hoc datasets."""
    kind = metric = None
    if task is not None:
        from . import data

        try:
            t = data.get_task(task)
        except ValueError:
            if labels is None:
                raise
        else:
            labels = list(labels) if labels else list(t.labels or [])
            kind, metric = t.kind, t.metric
    labels = list(labels or [])
    kind = kind or ("classification" if labels else "extraction")
    return labels, kind, metric or "accuracy"


def evaluate(model, tokenizer, dataset_or_task, mode: str = "score", batch_size: int = 8,
             max_samples: int | None = None, labels: Sequence[str] | None = None,
             max_new_tokens: int | None = None, max_len: int | None = None, seed: int = 0,
             data_dir: str | None = None, keep_predictions: bool = True, boundary: str = "train") -> dict:
    """Evaluate one task; returns the eval_info entry for it.

    dataset_or_task: a task name (loaded with data.load_task(split='test')), a datasets.Dataset or a
    list of {context, target[, task]} dicts. Classification tasks use `mode`; tasks without a label
    set (XBRL extraction, formula, ...) always generate and report exact-match / numeric accuracy.
    """
    if mode not in MODES:
        raise EvalError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EvalError(f"batch_size={batch_size!r}: expected an integer >= 1")
    if isinstance(dataset_or_task, str):
        from . import data

        dataset_or_task = data.load_task(dataset_or_task, split="test", data_dir=data_dir,
                                         max_samples=max_samples or None, seed=seed)
    prompts, gold, task, source = _rows(dataset_or_task)
    if max_samples:
        prompts, gold = prompts[:max_samples], gold[:max_samples]
    if not prompts:
        raise EvalError("dataset: expected at least one example, got 0")
    if boundary not in BOUNDARIES:
        raise EvalError(f"boundary={boundary!r}: expected one of {', '.join(BOUNDARIES)}")
    labels, kind, metric = _task_info(task, labels)
    from .models import contiguous_head, fix_bnb_cpu

    fix_bnb_cpu(model)  # a no-grad 4-bit forward must not break later LoRA training on CPU
    contiguous_head(model)   # a frozen head on a strided last-position slice is ~350x slower on CPU
    t0 = time.perf_counter()
    info: dict[str, Any] = {"task": task, "kind": kind, "metric": metric, "batch_size": batch_size,
                            "data_source": source}
    with quiet_bnb_int8():
        if not labels:
            n_new = max_new_tokens or EXTRACT_MAX_NEW_TOKENS
            preds = generate_texts(model, tokenizer, prompts, batch_size, n_new, max_len)
            info.update(mode="generate", **extraction_metrics(gold, preds, batched=metric == "batched_accuracy"))
            if metric == "bertscore":
                info["note"] = "BERTScore not computed offline; exact_match and token_f1 shown instead"
        else:
            gold = [_canon(g, labels) for g in gold]
            if mode == "generate":
                n_new = max_new_tokens or CLS_MAX_NEW_TOKENS
                outs = generate_texts(model, tokenizer, prompts, batch_size, n_new, max_len)
                preds = [parse_label(o, labels) for o in outs]
                info["raw_outputs_sample"] = outs[:5]
            else:
                sc = score_labels(model, tokenizer, prompts, labels, batch_size, max_len, boundary)
                info["boundary"] = boundary
                if mode == "calibrated":
                    sc, info["calibration"] = calibrate(model, tokenizer, prompts, labels, sc, batch_size, max_len,
                                                        boundary)
                preds = [labels[j] for j in sc.argmax(axis=1)]
            info.update(mode=mode, **classification_metrics(gold, preds, labels))
            # FinLoRA's F1 needs the raw answer text; label scoring's answer is the label it picked
            info.update(f1_weighted_finlora(gold, outs if mode == "generate" else preds))
            if mode == "generate" and keep_predictions:
                info["outputs"] = outs
            if task == "nwgi" and len(labels) == 7:
                info["nwgi_3class"] = collapse_nwgi(gold, preds)
    wall = time.perf_counter() - t0
    info.update(wall_s=wall, s_per_example=wall / len(prompts),
                truncated=sum(prompt_ids(tokenizer, p, max_len)[1] for p in prompts) if max_len else 0)
    if keep_predictions:
        info["predictions"] = [UNPARSEABLE if p is None else p for p in preds]
    return info


def _canon(target: str, labels: Sequence[str]) -> str:
    """Gold label in the label set's spelling (case/whitespace only; never guesses). A label spelt exactly so is
    kept: own data may hold 'Approve' and 'approve' as two classes, and the first was taken for both."""
    t = target.strip()
    if t in labels:
        return t
    for lab in labels:
        if t.lower() == lab.lower():
            return lab
    return t


# --------------------------------------------------------------------------------------------------
# Runs: a base model, and adapters on it without reloading the base for each

def evaluate_modes(model, tokenizer, task, modes: Sequence[str] = ("score",), **kw) -> dict:
    """eval_info entry for one task: the first mode's metrics at top level, every mode under 'modes'.

    Extraction tasks have a single protocol (generate), so they are evaluated once whatever `modes` says.
    """
    if isinstance(modes, str):
        modes = (modes,)
    if not modes or any(m not in MODES for m in modes):
        raise EvalError(f"modes={list(modes)!r}: expected a non-empty list from {', '.join(MODES)}")
    sample = None
    if isinstance(task, str):
        from . import data

        sample = {"max_samples": kw.pop("max_samples", None) or None, "seed": kw.pop("seed", 0)}
        task_name, data_dir = task, kw.pop("data_dir", None)
        task = data.load_task(task, split="test", data_dir=data_dir, **sample)
    from .data import describe_source   # the data layer loads lazily

    by_mode = {}
    for m in dict.fromkeys(modes):
        r = evaluate(model, tokenizer, task, mode=m, **kw)
        m = r.get("mode") or m   # a task without a label set generates whatever was asked: named as it ran
        by_mode[m] = r   # one progress line per protocol: a long evaluation is visibly not a hang
        src = r.get("data_source")   # None for a Dataset without a source column
        print(f"[eval {r.get('task', '')}] {m}: {r.get('n')} examples{f' of {describe_source(src)}' if src else ''}, "
              f"accuracy {r.get('accuracy', float('nan')):.3f}, {r.get('wall_s', 0):.1f} s", flush=True)
        if r["kind"] != "classification":
            break
    first = next(iter(by_mode.values()))
    entry = {k: v for k, v in first.items() if k not in ("predictions", "outputs")}
    entry["modes"] = by_mode
    if sample is not None:
        from .data.hashes import file_hashes

        entry["test_sample"] = sample
        from . import data

        if data.is_file_task(entry.get("task") or ""):
            entry["data_files"] = data.provenance(entry["task"])   # own data: which files, by sha256
        else:
            entry["data_files"] = file_hashes([task_name], "test", data_dir)
    if "score" in by_mode and "generate" in by_mode:
        entry["generate_score_agreement"] = agreement(by_mode["score"]["predictions"],
                                                      by_mode["generate"]["predictions"])
    return entry


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    if len(a) != len(b) or not a:
        raise EvalError(f"predictions: expected two equally long non-empty lists, got {len(a)} and {len(b)}")
    return sum(x == y for x, y in zip(a, b)) / len(a)


def _load(model_name: str, precision: str):
    from .models import load_model

    return load_model(model_name, precision=precision)


def evaluate_base(model_name: str, tasks: Sequence[str], results_dir: str | Path, precision: str = "bf16",
                  modes: Sequence[str] = ("score", "calibrated", "generate"), model=None, tokenizer=None,
                  preset: str | None = None, seed: int = 0, **kw) -> list[Path]:
    """Zero-shot base model on each task; writes results/<task>_<model>_<bits>bit_base.json (train_info null).

    Pass a loaded `model` (a PeftModel is evaluated with its adapters disabled) to avoid a reload.
    """
    from . import results
    from .config import resolve_precision

    precision = resolve_precision(precision)
    if model is None:
        model, tokenizer = _load(model_name, precision)
    from peft import PeftModel

    from .models import base_provenance

    ctx = model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()
    paths = []
    with ctx:
        for task in tasks:
            entry = evaluate_modes(model, tokenizer, task, modes, seed=seed, **kw)
            entry.update(model=model_name, precision=precision, adapter=None)
            run_id = results.base_run_id(task, model_name, precision)
            cfg = {"model": model_name, "tasks": [task], "precision": precision, "modes": list(modes),
                   "batch_size": kw.get("batch_size", 8), "max_samples": kw.get("max_samples")}
            path = Path(results_dir) / f"{run_id}.json"
            entry = _merge_base_entry(path, task, entry)
            results.write_base_eval(path, run_id, cfg, seed, task, entry, preset=preset,
                                    data_source=entry.get("data_source"), base_model=base_provenance(model_name))
            paths.append(path)
    return paths


def _merge_base_entry(path: Path, task: str, entry: dict) -> dict:
    """A base model has one zero-shot file per precision, which notebooks 01 and 05 both write: the same evaluation
    (test sample, data) keeps the modes stored and not rerun; another replaces it, and says what it replaces."""
    from .results import ResultsError, read_result

    try:
        old = (read_result(path).get("eval_info") or {}).get(task) if path.exists() else None
    except ResultsError:
        old = None   # a broken file is rewritten whole
    merged = keep_other_modes(old, entry)
    if old and old.get("modes") and not same_evaluation(old, entry):
        def what(e):
            return f"{e.get('n')} examples ({(e.get('test_sample') or {}).get('max_samples') or 'all'} asked), " \
                   f"modes {', '.join(e.get('modes') or [])}, {e.get('data_source')} data"
        print(f"[eval] {path.name}: replaces the stored zero-shot evaluation of {task} ({what(old)}) with this one "
              f"({what(merged)})", flush=True)
    return merged


def discover_runs(results_dir: str | Path, model: str | None = None) -> list[Path]:
    """Results files of finetuned runs (train_info with an adapter_path that exists), optionally of one base model."""
    from .results import ResultsError, read_result

    out = []
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            r = read_result(p, require=("run_info.config.model", "train_info.adapter_path"))
        except ResultsError:
            continue  # base-model results and half-finished runs have no adapter
        if model is not None and r["run_info"]["config"]["model"] != model:
            continue
        if _adapter_dir(p, r).exists():
            out.append(p)
        else:   # said, not silently dropped: the run is in the results but cannot be evaluated
            warnings.warn(f"{p}: train_info.adapter_path {r['train_info']['adapter_path']}: no such folder; run "
                          f"{r.get('run_id', p.stem)} is not evaluated (restore the folder, or retrain the run)",
                          stacklevel=2)
    return out


def select_runs(results_dir: str | Path, model: str | None = None, wanted: str | Sequence[str] = "") -> list[Path]:
    """discover_runs, restricted to the run ids in `wanted` (comma-separated or a list; empty: all). A wanted id
    that is not there is an error naming the ids that are (a typo evaluated nothing and said nothing)."""
    import difflib

    from .config import ConfigError

    found = discover_runs(results_dir, model)
    names = [r.strip() for r in (wanted.split(",") if isinstance(wanted, str) else wanted) if r.strip()]
    missing = [n for n in names if n not in {p.stem for p in found}]
    if missing:
        stems = [p.stem for p in found]
        close = difflib.get_close_matches(missing[0], stems, n=1)
        raise ConfigError(f"RUNS: {', '.join(missing)} not among the finetuned runs of {model or 'any model'} in "
                          f"{results_dir}" + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; there: {', '.join(stems) or 'none'}")
    return [p for p in found if not names or p.stem in names]


def run_adapter_dir(result_path: str | Path) -> Path:
    """The adapter folder a results file's train_info.adapter_path names (relative paths resolved)."""
    from .results import read_result

    return _adapter_dir(Path(result_path), read_result(result_path, require=("train_info.adapter_path",)))


def _adapter_dir(result_path: Path, r: dict) -> Path:
    """train_info.adapter_path: absolute, or relative to the cwd, the reports folder or the checkout."""
    from .paths import project_root

    p = Path(r["train_info"]["adapter_path"])
    if p.is_absolute():
        return p
    reports = Path(result_path).resolve().parent.parent
    for base in (Path.cwd(), reports, reports.parent, project_root()):
        if (base / p).exists():
            return base / p
    return p


def evaluate_runs(result_paths: Sequence[str | Path], tasks: Sequence[str] | None = None,
                  modes: Sequence[str] = ("score",), precision: str | None = None, trained_only: bool = True,
                  test_file: str | Path | None = None, **kw) -> dict[str, dict]:
    """Evaluate each run's adapter and merge eval_info into its results file; returns {run_id: eval_info}.
    test_file: runs trained on own data are scored on this file instead of the test data they were trained with
    (their task, labels and instruction as trained; the entry records the file by sha256).

    Runs sharing a base model and precision load it once: the first adapter through
    PeftModel.from_pretrained, the others with load_adapter, each selected with set_adapter.
    precision=None evaluates each run at its training precision (the paper evaluated all in int8).
    tasks=None: the tasks each run was trained on; otherwise `tasks`, restricted to the run's training
    tasks when trained_only (cross-task transfer with trained_only=False).
    """
    from peft import PeftModel

    from . import data
    from .artifacts import safetensors_adapter
    from .config import resolve_precision
    from .results import made_now, read_result, update_result

    precision = resolve_precision(precision) if precision else None
    made = made_now()   # read before any file is written
    groups: dict[tuple, list] = {}
    for p in result_paths:
        r = read_result(p, require=("run_id", "run_info.config.model", "run_info.config.precision",
                                    "train_info.adapter_path"))
        if not _adapter_dir(p, r).is_dir():
            raise EvalError(f"{p}: train_info.adapter_path {r['train_info']['adapter_path']}: no such folder; "
                            "expected the adapter saved by training (restore it, or retrain the run)")
        safetensors_adapter(_adapter_dir(p, r))   # every adapter checked before any base model loads
        cfg = r["run_info"]["config"]
        data.register_run(r)   # a run on own data: its task comes back from the files it names, unchanged
        if test_file:
            if not cfg.get("train_file"):
                raise EvalError(f"test_file={str(test_file)!r}: run {r['run_id']} trained on built-in tasks "
                                f"({', '.join(cfg.get('tasks') or [])}), whose test splits are the kit's; expected "
                                "runs trained on your own data (train --train-file)")
            data.register_config(dict(cfg, test_file=str(test_file)))   # same train file, labels, instruction
        groups.setdefault((cfg["model"], precision or cfg["precision"]), []).append((Path(p), r))
    _check_tasks(groups, tasks, trained_only)
    out = {}
    for (model_name, prec), runs in groups.items():
        base, tok = _load(model_name, prec)
        model = None
        for path, r in runs:
            name, adir = r["run_id"], str(_adapter_dir(path, r))
            if model is None:
                model = PeftModel.from_pretrained(base, adir, adapter_name=name, is_trainable=False)
            else:
                model.load_adapter(adir, adapter_name=name, is_trainable=False)
            model.set_adapter(name)
            model.eval()
            info = {}
            for task in _run_tasks(r, tasks, trained_only):
                info[task] = evaluate_modes(model, tok, task, modes, **kw)
                info[task].update(model=model_name, precision=prec, adapter=name, evaluated=made)
                info[task] = keep_other_modes((r.get("eval_info") or {}).get(task), info[task])
            update_result(path, eval_info=info)
            out[name] = info
        del model, base
    return out


SAME_EVALUATION = ("model", "precision", "adapter", "test_sample", "data_source", "data_files")


def same_evaluation(old: dict | None, new: dict) -> bool:
    """Whether two eval_info entries describe the same evaluation (SAME_EVALUATION: model, precision, adapter,
    test sample and test data), so that their modes compare."""
    return bool(old) and all(old.get(k) == new.get(k) for k in SAME_EVALUATION)


def keep_other_modes(old: dict | None, new: dict) -> dict:
    """`new` with the modes an earlier evaluation of the same task stored and this one did not run (evaluating
    `score` again must not drop a stored `generate`), where both describe the same evaluation: model, precision,
    adapter, test sample and test data (source and file hashes). Another setting replaces the entry whole, since
    its modes would not compare. A base model's zero-shot file (evaluate_base) is merged the same way."""
    if not old or not old.get("modes") or not same_evaluation(old, new):
        return new
    # files before 2026-12-04 keyed a generated answer by the mode asked ('score'): the same protocol, not kept
    # and a mode of another size is of another sample (own data's holdout rule changed on 2026-12-04)
    kept = {m: v for m, v in old["modes"].items() if m not in new["modes"] and v.get("mode", m) not in new["modes"]
            and v.get("n", new.get("n")) == new.get("n")}
    if kept:
        for v in kept.values():   # when each kept mode ran, unless it says so already
            v.setdefault("evaluated", old.get("evaluated"))
        new["modes"] = {**new["modes"], **kept}
        both = new["modes"].get("score"), new["modes"].get("generate")
        if all(m and m.get("predictions") for m in both):   # as evaluate_modes computes it for both run together
            new["generate_score_agreement"] = agreement(both[0]["predictions"], both[1]["predictions"])
    return new


def _check_tasks(groups: dict, tasks, trained_only: bool) -> None:
    """Before any model loads: every requested task exists, and each run has one to evaluate (with trained_only a
    run skips the requested tasks it was not trained on; a run left with none is named, all of them an error)."""
    from . import data

    for t in ([x.strip() for x in tasks.split(",") if x.strip()] if isinstance(tasks, str) else tasks or []):
        try:
            data.get_task(t)
        except ValueError as e:
            raise EvalError(f"tasks: {e}") from None
    runs = [r for group in groups.values() for _, r in group]
    idle = [f"{r['run_id']} (trained on {', '.join(r['run_info']['config'].get('tasks') or [])})" for r in runs
            if not _run_tasks(r, tasks, trained_only)]
    if idle and len(idle) == len(runs):
        raise EvalError(f"tasks={tasks!r}: not a training task of {'; '.join(idle)}; expected one of the runs' "
                        "tasks, or trained_only=False (--any-task) to evaluate a run on tasks it was not trained on")
    for line in idle:
        print(f"[eval] {line}: none of tasks={tasks!r}, nothing to evaluate", flush=True)


def _run_tasks(run: dict, tasks: Sequence[str] | None, trained_only: bool) -> list[str]:
    trained = list(run["run_info"]["config"].get("tasks") or [])
    if tasks is None:
        return trained
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    return [t for t in tasks if t in trained] if trained_only else list(tasks)


def evaluate_run(results_json_path: str | Path, tasks: Sequence[str] | None = None, **kw) -> dict:
    """One run's adapter on `tasks` (default: its training tasks); eval_info is merged into the file."""
    return next(iter(evaluate_runs([results_json_path], tasks, **kw).values()))


def rescore(results_path: str | Path, data_dir: str | None = None, max_samples: int | None = None,
            seed: int | None = None, commit: str | None = None) -> dict:
    """Re-apply today's generated-answer metrics to the predictions a results file stored; no model needed.

    The gold answers are drawn again (data.load_task with the test sample the evaluation used: its
    recorded `test_sample`, else the arguments, else run_info.config.max_samples and run_info.seed). The metrics
    whose rules did not change (exact match, token F1) must come out as stored, which proves the gold
    lines up with the predictions; otherwise nothing is written. Classification entries are left alone.
    Returns {task: {"before": {...}, "after": {...}}} and rewrites the file atomically. `commit` is the code's
    commit to record (default: git_commit() now); a batch passes the one it read before writing any file, since
    each rewritten results file makes the working tree look dirty to the next.
    """
    from . import data
    from .results import git_commit, now_iso, read_result, update_result

    path = Path(results_path)
    r = read_result(path, require=("eval_info",))
    cfg = r.get("run_info", {}).get("config", {})
    data.register_config(cfg)   # a run on own data: its task comes back from the files it names
    changed, info = {}, {}
    for task, entry in r["eval_info"].items():
        if not entry.get("modes"):
            continue
        if entry.get("kind") == "classification":
            new = _rescore_finlora(path, task, entry, r, data_dir, max_samples, seed, commit)
            if new:
                info[task] = entry
                changed[task] = new
            continue
        mode = next(iter(entry["modes"]))
        preds = entry["modes"][mode].get("predictions")
        if preds is None:
            raise EvalError(f"{path}: eval_info.{task} stored no predictions; rerun the evaluation")
        sample = entry.get("test_sample") or {
            "max_samples": max_samples if max_samples is not None else cfg.get("max_samples"),
            "seed": seed if seed is not None else r.get("run_info", {}).get("seed", 0)}
        _, gold, _, _ = _rows(data.load_task(task, split="test", data_dir=data_dir, **sample))
        if sample["max_samples"]:
            gold = gold[:sample["max_samples"]]
        if len(gold) != len(preds):
            raise EvalError(f"{path}: eval_info.{task} has {len(preds)} predictions but the test sample "
                            f"{sample} has {len(gold)} examples; pass max_samples/seed as evaluated")
        new = extraction_metrics(gold, preds, batched=entry.get("metric") == "batched_accuracy",
                                 rel_tol=entry.get("numeric_rel_tol", 0.01), abs_tol=entry.get("numeric_abs_tol", 0.01))
        for k in ("exact_match", "token_f1"):
            if not math.isclose(new[k], entry[k], rel_tol=1e-9, abs_tol=1e-12):
                raise EvalError(f"{path}: eval_info.{task}.{k} recomputes to {new[k]:.6f}, stored {entry[k]:.6f}: "
                                f"the gold does not line up with the stored predictions (sample {sample})")
        before = {k: entry.get(k) for k in new}
        first = (entry.get("rescored") or {}).get("before", before)   # a second rescore keeps the as-run numbers
        entry.update(new, test_sample=sample,
                     rescored={"at": now_iso(), "git_commit": commit or git_commit(), "before": first})
        entry["modes"][mode].update(new)
        info[task] = entry
        changed[task] = {"before": before, "after": new}
    if info:
        update_result(path, eval_info=info)
    return changed


def _test_gold(path: Path, task: str, entry: dict, r: dict, data_dir, max_samples, seed) -> tuple[list[str], dict]:
    """The gold answers of the test sample an entry was evaluated on (see rescore)."""
    from . import data

    cfg = r.get("run_info", {}).get("config", {})
    sample = entry.get("test_sample") or {
        "max_samples": max_samples if max_samples is not None else cfg.get("max_samples"),
        "seed": seed if seed is not None else r.get("run_info", {}).get("seed", 0)}
    _, gold, _, _ = _rows(data.load_task(task, split="test", data_dir=data_dir, **sample))
    return (gold[:sample["max_samples"]] if sample["max_samples"] else gold), sample


def _rescore_finlora(path: Path, task: str, entry: dict, r: dict, data_dir, max_samples, seed,
                     commit: str | None = None) -> dict:
    """Add FinLoRA's F1 rule (f1_weighted_finlora) to a classification entry from its stored predictions.

    Label-scored modes use the predicted label as the answer text; a generated mode needs its stored raw
    `outputs` (older files kept only the parsed label) and is left alone without them. The stored accuracy
    and weighted F1 must recompute exactly, which proves the redrawn gold lines up with the predictions."""
    from .results import git_commit, now_iso

    todo = {m: e for m, e in entry["modes"].items() if e.get("predictions") is not None
            and "f1_weighted_finlora" not in e and (m != "generate" or e.get("outputs") is not None)}
    if not todo:
        return {}
    gold, sample = _test_gold(path, task, entry, r, data_dir, max_samples, seed)
    labels = entry.get("labels") or next(iter(todo.values())).get("labels") or []
    gold = [_canon(g, labels) for g in gold]
    out = {}
    for m, e in todo.items():
        if len(gold) != len(e["predictions"]):
            raise EvalError(f"{path}: eval_info.{task}.modes.{m} has {len(e['predictions'])} predictions but the "
                            f"test sample {sample} has {len(gold)} examples; pass max_samples/seed as evaluated")
        preds = [None if p == UNPARSEABLE else p for p in e["predictions"]]
        check = classification_metrics(gold, preds, labels)
        for k in ("accuracy", "f1_weighted"):
            if not math.isclose(check[k], e[k], rel_tol=1e-9, abs_tol=1e-12):
                raise EvalError(f"{path}: eval_info.{task}.modes.{m}.{k} recomputes to {check[k]:.6f}, stored "
                                f"{e[k]:.6f}: the gold does not line up with the stored predictions (sample {sample})")
        new = f1_weighted_finlora(gold, e["outputs"] if m == "generate" else e["predictions"])
        e.update(new)
        if e.get("mode", m) == entry.get("mode"):
            entry.update(new)
        out[m] = {"before": {"accuracy": e["accuracy"], "f1_weighted_finlora": None},
                  "after": {"accuracy": e["accuracy"], **new}}
    entry.setdefault("rescored_finlora", {"at": now_iso(), "git_commit": commit or git_commit(), "modes": sorted(out)})
    entry["test_sample"] = entry.get("test_sample") or sample
    return out[entry["mode"]] if entry.get("mode") in out else next(iter(out.values()))


# --------------------------------------------------------------------------------------------------
# CLI

@cli_entry
def main(argv: list[str] | None = None) -> int:
    """python -m finlora_utils evaluate RESULTS.json [...] | --base MODEL --tasks T [--train-file F ...]"""
    import argparse
    import sys

    from . import data
    from .config import DEFAULT_MAX_LABELS, ConfigError, file_task_name

    ap = argparse.ArgumentParser(prog="python -m finlora_utils evaluate",
                                 description="Evaluate finetuned runs (their results JSON) or a zero-shot base model; "
                                             "eval_info is written into the results files.")
    ap.add_argument("runs", nargs="*", help="results JSON files of finetuned runs (from train)")
    ap.add_argument("--base", default=None, help="evaluate this base model zero-shot instead (embedded, a path, ...)")
    ap.add_argument("--tasks", default=None, help="comma-separated (default: each run's training tasks)")
    ap.add_argument("--task", dest="tasks", help="alias of --tasks, as train and predict take it")
    ap.add_argument("--any-task", action="store_true",
                    help="evaluate each run on --tasks even where it was not trained on them (cross-task transfer)")
    ap.add_argument("--modes", default="score", help=f"comma-separated from {', '.join(MODES)}")
    ap.add_argument("--precision", default=None, help="default: each run's training precision (base: auto)")
    ap.add_argument("--max-samples", type=int, default=0, help="test examples per task, 0 for all")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results-dir", default=None, help="--base: where its results JSON goes (default reports/results)")
    for f, h in (("train-file", "own data for --base: train JSONL/CSV"),
                 ("test-file", "own data: test file (with runs: score runs trained on own data on this file)"),
                 ("task-name", "own data: task name"), ("instruction", "own data: instruction for CSV rows")):
        ap.add_argument(f"--{f}", default="", help=h)
    ap.add_argument("--max-labels", type=int, default=DEFAULT_MAX_LABELS, help="own data: label-set limit")
    ap.add_argument("--text-column", default=None, help="own data for --base: the CSV's text column")
    ap.add_argument("--label-column", default=None, help="own data for --base: the CSV's label column")
    ns = ap.parse_intermixed_args(argv)   # results files may follow the options
    for name in ("max_samples", "batch_size"):   # the flag's own terms, before any model loads
        low = 0 if name == "max_samples" else 1
        if getattr(ns, name) < low:
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(ns, name)}: expected >= {low}"
                              + (" (0: every test example)" if low == 0 else ""))
    modes = [m.strip() for m in ns.modes.split(",") if m.strip()]
    kw = dict(batch_size=ns.batch_size, max_samples=ns.max_samples or None, seed=ns.seed)
    # the flags that describe an own-data train file's task: with a run (whose task is what it trained on) or
    # without --train-file they would silently not apply
    own_flags = [f"--{f.replace('_', '-')}" for f in ("task_name", "instruction", "text_column", "label_column")
                 if getattr(ns, f)] + (["--max-labels"] if ns.max_labels != DEFAULT_MAX_LABELS else [])
    try:
        if not modes or any(m not in MODES for m in modes):   # before any model loads
            raise ConfigError(f"modes={ns.modes!r}: expected a comma-separated list from {', '.join(MODES)}")
        if bool(ns.runs) == bool(ns.base):
            raise ConfigError("runs: expected results JSON files of finetuned runs, or --base MODEL (not both)")
        if ns.base:
            tasks = [t.strip() for t in (ns.tasks or "").split(",") if t.strip()]
            unused = ["--test-file"] * bool(ns.test_file) + own_flags
            if unused and not ns.train_file:
                raise ConfigError(f"{', '.join(unused)}: only with --train-file (own data)")
            if ns.train_file:
                data.register_files(ns.train_file, ns.test_file or None, ns.task_name or None, ns.instruction or None,
                                    ns.max_labels, text_column=ns.text_column, label_column=ns.label_column)
                own = file_task_name(ns.train_file, ns.task_name)
                tasks = tasks if own in tasks else [own]
            if not tasks:
                raise ConfigError("tasks: expected --tasks (or --train-file) with --base")
            from .paths import reports_dir

            paths = evaluate_base(ns.base, tasks, ns.results_dir or reports_dir() / "results",
                                  precision=ns.precision or "auto", modes=modes, **kw)
            out = {p.stem: json.loads(p.read_text())["eval_info"] for p in paths}
        else:
            unused = ["--train-file"] * bool(ns.train_file) + own_flags
            if unused:
                raise ConfigError(f"{', '.join(unused)}: only with --base; a run keeps the task, labels and "
                                  "instruction it trained with (--test-file scores it on another test file)")
            out = evaluate_runs(ns.runs, tasks=ns.tasks, modes=modes, precision=ns.precision,
                                trained_only=not ns.any_task, test_file=ns.test_file or None, **kw)
    except (ConfigError, EvalError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for run_id, info in out.items():
        for task, e in info.items():
            f1 = f", f1_weighted {e['f1_weighted']:.4f}" if "f1_weighted" in e else ""
            print(f"{run_id} {task}: {e['mode']} accuracy {e['accuracy']:.4f}{f1} (n={e['n']})")
    return 0


if __name__ == "__main__":   # python -m finlora_utils.evaluate works like the verb
    sys.exit(main())
