"""Which data files a run read, by content: {path relative to the data dir: sha256}."""
from __future__ import annotations

import os
from pathlib import Path

from . import sample, sources
from .loader import DERIVED_SPLITS, files_for

_HASHES: dict[tuple[str, float, int], str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size)   # hash each file once per process (XBRL files are tens of MB)
    if key not in _HASHES:
        _HASHES[key] = sources.sha256_file(path)
    return _HASHES[key]


def file_hashes(tasks, split: str, data_dir: str | os.PathLike | None = None) -> dict[str, str | None]:
    """sha256 of every file load_task(task, split) reads, keyed by its path relative to the data dir (never
    an absolute path); None for a file that is not present. Where a real file is missing and the task falls
    back to the synthetic sample set, that file too, keyed 'sample-v<SAMPLE_VERSION>/<task>_<split>.jsonl'."""
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    out: dict[str, str | None] = {}
    for task in tasks:
        try:
            rels = files_for(task, split)
        except (ValueError, KeyError):   # a task without this split: load_task itself reports that, not provenance
            continue
        for rel in rels:
            if rel not in out:
                p, _ = sources.resolve(rel, data_dir, allow_download=False)
                out[rel] = _sha256(p) if p is not None else None
        if task in sample.SAMPLE_TASKS and any(out[rel] is None for rel in rels):
            f = sample.sample_file(sources.sample_dir(), task, "train" if split in DERIVED_SPLITS else split)
            if f.is_file():   # what the loader read instead (it writes the set before reading it)
                out[f"sample-v{sample.SAMPLE_VERSION}/{f.name}"] = _sha256(f)
    return dict(sorted(out.items()))
