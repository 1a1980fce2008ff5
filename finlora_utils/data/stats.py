"""Per-task data profile for notebook 00: sizes, label distributions, token lengths, examples."""
from __future__ import annotations

from collections import Counter

import pandas as pd

from .loader import NoSplitError, fetch_hint, load_task, source_of
from .sources import DataUnavailableError
from .tasks import get_task
from .validate import percentiles

LENGTH_THRESHOLDS = (512, 1024, 2048, 4096)


def _splits(name: str, data_dir, sample_size: int, seed: int, skipped: list[dict]):
    for split in ("train", "test"):
        try:
            ds = load_task(name, split, data_dir=data_dir, max_samples=sample_size or None, seed=seed)
        except NoSplitError:
            continue
        except DataUnavailableError as e:
            # Offline without the real files only the sample tasks have data: skip the others, visibly.
            skipped.append(dict(task=name, split=split, missing=", ".join(getattr(e, "missing", [str(e)])),
                                fetch=fetch_hint(name)))
            continue
        yield split, ds


def _say_skipped(name: str, skipped: list[dict]) -> None:
    mine = [s for s in skipped if s["task"] == name]
    if mine:
        files = ", ".join(dict.fromkeys(f for s in mine for f in s["missing"].split(", ")))
        print(f"skipped {name} ({', '.join(s['split'] for s in mine)}): no data ({files}); "
              f"to get it: {mine[0]['fetch']}", flush=True)


def profile_tasks(tasks, tokenizer, sample_size: int = 0, seed: int = 0, data_dir=None) -> dict[str, pd.DataFrame]:
    """Load every split of every task once; return tables keyed overview / labels / lengths / token_counts / examples.

    Token lengths count prompt + target with the given tokenizer (no special tokens), which is what a
    training example costs before truncation. A split with no reachable data (offline, no data dir, not a
    sample task) is not profiled: it prints one line naming the missing files and the command that fetches
    them, and is listed in the ``skipped`` table (task, split, missing, fetch).
    """
    if not isinstance(sample_size, int) or isinstance(sample_size, bool) or sample_size < 0:
        raise ValueError(f"sample_size={sample_size!r}: expected an integer >= 0 (0: every example)")
    overview, labels, lengths, counts, examples, skipped = [], [], [], [], [], []
    for name in tasks:
        task = get_task(name)
        for split, ds in _splits(name, data_dir, sample_size, seed, skipped):
            texts = [c + t for c, t in zip(ds["context"], ds["target"])]
            n_tok = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
            overview.append(dict(task=name, split=split, kind=task.kind, rows=len(ds), source=source_of(ds),
                                 metric=task.metric))
            if task.labels:
                c = Counter(ds["target"])
                labels += [dict(task=name, split=split, label=lab, count=c.get(lab, 0),
                                share=round(c.get(lab, 0) / max(len(ds), 1), 4)) for lab in task.labels]
            pc = percentiles(n_tok)
            row = dict(task=name, split=split, p50=pc[50], p90=pc[90], p95=pc[95], p99=pc[99], max=pc[100])
            row.update({f"over_{t}": sum(n > t for n in n_tok) for t in LENGTH_THRESHOLDS})
            lengths.append(row)
            counts += [dict(task=name, split=split, tokens=n) for n in n_tok]
            if split == "test" or not any(e["task"] == name for e in examples):
                examples.append(dict(task=name, split=split, context=ds[0]["context"], target=ds[0]["target"]))
        _say_skipped(name, skipped)
    return {"overview": pd.DataFrame(overview), "labels": pd.DataFrame(labels), "lengths": pd.DataFrame(lengths),
            "token_counts": pd.DataFrame(counts), "examples": pd.DataFrame(examples),
            "skipped": pd.DataFrame(skipped, columns=["task", "split", "missing", "fetch"])}
