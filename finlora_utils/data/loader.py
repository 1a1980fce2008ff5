"""load_task / load_tasks / data_source: resolve a task's files, build its rows, return a datasets.Dataset."""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

from . import builders, files, sample, sources
from .sources import DataUnavailableError
from .tasks import get_task

SPLITS = ("train", "test", "fit", "validation")
# "validation": a fixed, stratified 10% of the train split for tuning (never the test set); "fit": the
# other 90%. Fixed seed, so every run, notebook and bench sees the same holdout.
DERIVED_SPLITS = ("fit", "validation")
VALIDATION_FRACTION, VALIDATION_SEED = 0.1, 20241211
COLUMNS = ("context", "target", "task", "source")

FIQA_HEADLINE = "fiqa/task1_headline_ABSA_train.json"
FIQA_POST = "fiqa/task1_post_ABSA_train.json"
FPB_RAW = "fpb/Sentences_50Agree.txt"
TFNS_TRAIN, TFNS_VALID = "tfns/sent_train.csv", "tfns/sent_valid.csv"
NER_TRAIN, NER_TEST_RAW = "ner_fin/FIN5_train.txt", "ner_fin/FIN3_test.txt"
HEADLINE_CSV = "headline_gold/gold-dataset-sinha-khandait.csv"
# FinLoRA's own train files (tasks without one are rebuilt from raw sources).
TRAIN_FILES = {t: f"finlora/train/{t}_train.jsonl" for t in ("xbrl_term", "formula", "financebench")}


class NoSplitError(ValueError):
    """The task has no such split (e.g. NWGI's train split)."""


def files_for(name: str, split: str) -> list[str]:
    """The data files (paths relative to the data dir) that ``load_task(name, split)`` reads."""
    task = get_task(name)
    _check_split(task, split)
    if files.is_file_task(name):
        return [f["path"] for f in files.provenance(name)[0]["files"]]
    if split in DERIVED_SPLITS:
        split = "train"
    test = task.test_file
    special = {
        ("fpb", "train"): [FPB_RAW],
        ("fiqa", "train"): [FIQA_HEADLINE, FIQA_POST, test],
        ("tfns", "train"): [TFNS_TRAIN],
        ("tfns_finlora_labels", "train"): [TFNS_TRAIN],
        ("headline", "train"): [HEADLINE_CSV],
        ("ner", "train"): [NER_TRAIN, test],
    }
    if (name, split) in special:
        return special[(name, split)]
    return [test] if split == "test" else [TRAIN_FILES[name]]


def _check_split(task, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    if split != "test" and not task.has_train:
        why = ("FinLoRA ships only nwgi_test.jsonl and the NWGI training set is not among the available sources"
               if task.name == "nwgi" else "FinLoRA provides this XBRL set as a test set only")
        raise NoSplitError(f"task {task.name!r} has only a test split ({why}); load split='test', or train on "
                           f"another task (train splits: {', '.join(_train_tasks())})")


def _train_tasks() -> list[str]:
    from .tasks import TASKS
    return [t.name for t in TASKS.values() if t.has_train and t.variant_of is None]


def _build(name: str, split: str, f: dict[str, Path]) -> list[dict]:
    task = get_task(name)
    if name == "fpb" and split == "train":
        return builders.build_fpb(f[FPB_RAW], "train")
    if name == "fiqa" and split == "train":
        return builders.build_fiqa_train(f[FIQA_HEADLINE], f[FIQA_POST], builders.read_jsonl(f[task.test_file]))
    if name == "tfns":
        return builders.build_tfns(f[TFNS_VALID if split == "test" else TFNS_TRAIN])
    if name == "tfns_finlora_labels" and split == "train":
        return builders.build_tfns(f[TFNS_TRAIN], builders.TFNS_FINLORA_LABELS)
    if name == "headline":
        return builders.build_headline(f[HEADLINE_CSV], split)
    if name == "ner" and split == "train":
        return builders.build_ner_train(f[NER_TRAIN], builders.read_jsonl(f[task.test_file]))
    rows = builders.read_jsonl(f[task.test_file if split == "test" else TRAIN_FILES[name]])
    if name == "xbrl_term" and split == "train":
        rows = [r for r in rows if r["target"] != "nan"]  # 6 pandas-NaN artefacts in FinLoRA's file
    return rows


def _resolve_all(name: str, split: str, data_dir) -> tuple[dict[str, Path] | None, list[str]]:
    found, missing = {}, []
    for rel in files_for(name, split):
        p, notes = sources.resolve(rel, data_dir)
        if p is None:
            missing.append(f"{rel} ({'; '.join(notes)})")
        else:
            found[rel] = p
    return (found if not missing else None), missing


_ROWS: dict[tuple, tuple[list[dict], str]] = {}
_WARNED: set[str] = set()


def validation_indices(targets: list[str], classification: bool) -> list[int]:
    """Indices of the validation holdout within a train split (stratified by label for classification)."""
    n = max(1, round(len(targets) * VALIDATION_FRACTION))
    return _subsample(targets, n, VALIDATION_SEED, classification)


def _rows(name: str, split: str, data_dir, allow_sample: bool) -> tuple[list[dict], str]:
    """(rows, "real" | "sample" | "file") for a task split; built rows are memoised per resolved file set."""
    task = get_task(name)
    if files.is_file_task(name):
        return _file_split(name, split), files.SOURCE
    if split in DERIVED_SPLITS:
        _check_split(task, split)
        rows, source = _rows(name, "train", data_dir, allow_sample)
        held = set(validation_indices([r["target"] for r in rows], task.kind == "classification"))
        keep = (lambda i: i in held) if split == "validation" else (lambda i: i not in held)
        return [r for i, r in enumerate(rows) if keep(i)], source
    found, missing = _resolve_all(name, split, data_dir)
    if found is not None:
        key = (name, split, tuple(sorted((k, str(v), v.stat().st_mtime) for k, v in found.items())))
        if key not in _ROWS:
            _ROWS[key] = (_build(name, split, found), "real")
        return _ROWS[key]
    if allow_sample and name in sample.SAMPLE_TASKS:
        d = sample.ensure(sources.sample_dir())
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(f"task {name!r}: real data not reachable, using the SYNTHETIC sample set in {d} "
                          f"(results on it are not FinLoRA results). Missing: {'; '.join(missing)}", stacklevel=3)
        return builders.read_jsonl(sample.sample_file(d, name, split)), "sample"
    hint = fetch_hint(name)
    if not allow_sample and name in sample.SAMPLE_TASKS:
        hint += " (allow_sample=False forbids the synthetic sample set)"
    err = DataUnavailableError(f"task {name!r} split {split!r}: no source for " + "; ".join(missing) + ". " + hint)
    err.missing = [m.split(" (", 1)[0] for m in missing]   # the bare file paths, for one-line skip notes
    raise err


def fetch_hint(name: str) -> str:
    """How a user gets the real files of ``name``: the command that fetches them, or the data dir to point at."""
    hint = (f"run `python -m finlora_utils.data fetch {name}` where the network is reachable, or set "
            f"{sources.ENV_DATA_DIR} to a directory laid out like the shared data (see data/README.md)")
    if sources.offline():
        hint += f" ({sources.ENV_OFFLINE} is set: this process never downloads)"
    return hint


def availability(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """``{split: "real" | "sample" | "missing: <files>"}`` for the task's train (if it has one) and test splits.

    Resolves the files only (nothing is built) and never raises for missing data, unlike load_task, so a
    study can label its pages and skip a task with one line saying why; may download, like load_task.
    """
    task = get_task(name)
    out = {}
    for split in (("train", "test") if task.has_train else ("test",)):
        found, missing = _resolve_all(name, split, data_dir)
        if found is not None:
            out[split] = "real"
        elif name in sample.SAMPLE_TASKS:
            out[split] = "sample"
        else:
            out[split] = "missing: " + ", ".join(m.split(" (", 1)[0] for m in missing)
    return out


def _file_split(name: str, split: str) -> list[dict]:
    """A file task's split: validation / fit carved from the train file as for built-in tasks; without a test
    file the holdout is the test split too, and train leaves it out."""
    train, test = files.file_rows(name)
    held = set(validation_indices([r["target"] for r in train], get_task(name).kind == "classification"))
    # an exported table often repeats rows: every copy of a held-out text is held out, so none is trained on
    held_texts = {train[i]["context"] for i in held}
    held = {i for i, r in enumerate(train) if r["context"] in held_texts}
    if split == "validation" or (split == "test" and test is None):
        return [r for i, r in enumerate(train) if i in held]
    if split == "test":
        return test
    if split == "fit" or test is None:
        return [r for i, r in enumerate(train) if i not in held]
    return train


def _subsample(targets: list[str], n: int, seed: int, stratify: bool) -> list[int]:
    """Seeded, deterministic subsample of n indices (returned in original order); stratified by target with
    largest-remainder quotas, each present class getting at least one row when n allows."""
    rng = random.Random(seed)
    if not stratify:
        return sorted(rng.sample(range(len(targets)), n))
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(targets):
        groups.setdefault(t, []).append(i)
    labels = sorted(groups)
    exact = {lab: n * len(groups[lab]) / len(targets) for lab in labels}
    quota = {lab: int(exact[lab]) for lab in labels}
    for lab in sorted(labels, key=lambda x: (-(exact[x] - quota[x]), x))[: n - sum(quota.values())]:
        quota[lab] += 1
    if n >= len(labels):
        for lab in labels:
            if quota[lab] == 0:
                donor = max(labels, key=lambda x: (quota[x], x))
                quota[donor] -= 1
                quota[lab] = 1
    picked = []
    for lab in labels:
        picked.extend(rng.sample(groups[lab], quota[lab]))
    return sorted(picked)


def load_task(name: str, split: str = "test", data_dir: str | os.PathLike | None = None,
              max_samples: int | None = None, seed: int = 0, allow_sample: bool = True):
    """One task split as a ``datasets.Dataset`` with columns context, target, task, source ("real"/"sample").

    Files resolve in this order: ``data_dir`` (else FINLORA_DATA_DIR), the cache under data/cache/, a
    sha256-verified download (FINLORA_DOWNLOAD_BASE overrides the manifest URLs), then - only for the
    sentiment tasks of the default study and only if ``allow_sample`` - the synthetic sample set.
    ``max_samples`` keeps a seeded subsample (stratified by label for classification), in original order.
    """
    import datasets

    task = get_task(name)
    _check_split(task, split)
    rows, source = _rows(name, split, data_dir, allow_sample)
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"max_samples={max_samples}: must be >= 1 or None")
        if max_samples < len(rows):
            idx = _subsample([r["target"] for r in rows], max_samples, seed, task.kind == "classification")
            rows = [rows[i] for i in idx]
    return datasets.Dataset.from_dict({
        "context": [r["context"] for r in rows],
        "target": [r["target"] for r in rows],
        "task": [name] * len(rows),
        "source": [source] * len(rows),
    })


def load_tasks(names, split: str = "train", data_dir: str | os.PathLike | None = None,
               max_samples: int | None = None, seed: int = 0, allow_sample: bool = True):
    """Several tasks concatenated and shuffled with ``seed`` (a multi-task mix); max_samples is per task."""
    import datasets

    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("names: give at least one task name")
    parts = [load_task(n, split, data_dir, max_samples, seed, allow_sample) for n in names]
    # a 'Flattening the indices' bar per run between the kit's own progress lines; HF_DATASETS_DISABLE_PROGRESS_BARS,
    # where set, decides instead (datasets refuses, with a warning, to switch against it)
    quiet = datasets.is_progress_bar_enabled() and datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is None
    if quiet:
        datasets.disable_progress_bars()
    try:
        return datasets.concatenate_datasets(parts).shuffle(seed=seed).flatten_indices()
    finally:
        if quiet:
            datasets.enable_progress_bars()


def data_source(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """"real" or "sample": what ``load_task(name)`` (test split) would use. May download, like load_task."""
    return _rows(name, "test", data_dir, True)[1]


def source_of(ds) -> str:
    """"real", "sample" or "mixed" for a Dataset returned by load_task/load_tasks."""
    return combined_source(ds.unique("source"))


def combined_source(sources) -> str:
    """One source for several ("real", "sample", "file"): that one where all agree, "none" for none, else "mixed"."""
    kinds = set(sources)
    return kinds.pop() if len(kinds) == 1 else "mixed" if kinds else "none"


def describe_source(source: str) -> str:
    """What a progress line says about source_of's answer: a run on the synthetic sample set must say so
    where the user looks (the loader's warning scrolls away), not only in the results JSON."""
    if source in ("sample", "mixed"):
        part = "" if source == "sample" else "partly "
        return (f"{part}SYNTHETIC sample data, not FinLoRA results (the real data: set FINLORA_DATA_DIR or run "
                "python -m finlora_utils.data fetch)")
    return "your files" if source == files.SOURCE else f"{source} data"
