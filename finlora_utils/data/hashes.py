"""Which data files a run read, by content: {path relative to the data dir: sha256}."""
from __future__ import annotations

import os
from pathlib import Path

from . import sources
from .loader import files_for

_HASHES: dict[tuple[str, float, int], str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size)   # hash each file once per process (XBRL files are tens of MB)
    if key not in _HASHES:
        _HASHES[key] = sources.sha256_file(path)
    return _HASHES[key]


def file_hashes(tasks, split: str, data_dir: str | os.PathLike | None = None) -> dict[str, str | None]:
    """sha256 of every file load_task(task, split) reads, keyed by its path relative to the data dir (never
    an absolute path); None for a file that is not present (the run used the synthetic sample set)."""
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
    return dict(sorted(out.items()))
