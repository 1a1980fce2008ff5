"""Task registry and data layer: every FinLoRA task as a ``datasets.Dataset`` with context, target, task, source.

    from finlora_utils import data
    data.task_names()                       # ['fpb', 'fiqa', 'tfns', 'nwgi', 'headline', 'ner', ...]
    ds = data.load_task("fpb", "train", max_samples=200, seed=0)
    data.data_source("fpb")                 # "real" | "sample"

Your own data: ``data.register_files("my_train.jsonl", test="my_test.jsonl")`` (or a CSV) registers a task
read from those files alone (see files.py); its name then works everywhere a built-in task name does.
Files resolve from FINLORA_DATA_DIR, then data/cache/, then a sha256-verified download, then (sentiment tasks
only) a generated synthetic sample set. See data/README.md for sources, splits and how they were checked.
CLI: ``python -m finlora_utils.data {validate FILE [--task T] | fetch [TASK...] | sample | tasks}``.
"""
from .files import (FileTaskError, changed_files, is_file_task, provenance, register_config, register_files,
                    register_run, task_list)
from .loader import (NoSplitError, availability, combined_source, data_source, describe_source, fetch_hint,
                     files_for, load_task, load_tasks, source_of)
from .sources import ChecksumError, DataError, DataUnavailableError, DownloadError
from .tasks import (KINDS, METRICS, NWGI_LABELS, SENTIMENT_TASKS, TASKS, Task, format_prompt, get_task,
                    normalize_label, nwgi_to_3class, split_prompt, task_names)

__all__ = [
    "TASKS", "Task", "KINDS", "METRICS", "NWGI_LABELS", "SENTIMENT_TASKS", "task_names", "get_task", "load_task",
    "load_tasks", "data_source", "source_of", "combined_source", "describe_source", "files_for", "format_prompt", "split_prompt",
    "normalize_label", "nwgi_to_3class", "register_files", "register_config", "is_file_task", "provenance",
    "FileTaskError", "task_list", "register_run", "changed_files",
    "availability", "fetch_hint", "DataError", "DataUnavailableError", "DownloadError", "ChecksumError", "NoSplitError",
]
