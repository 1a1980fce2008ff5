"""Per-task data profile for notebook 00: sizes, label distributions, token lengths, examples."""
from __future__ import annotations

from collections import Counter

import pandas as pd

from .loader import NoSplitError, load_task, source_of
from .tasks import get_task
from .validate import percentiles

LENGTH_THRESHOLDS = (512, 1024, 2048, 4096)


def _splits(name: str, data_dir, sample_size: int, seed: int):
    for split in ("train", "test"):
        try:
            yield split, load_task(name, split, data_dir=data_dir, max_samples=sample_size or None, seed=seed)
        except NoSplitError:
            continue


def profile_tasks(tasks, tokenizer, sample_size: int = 0, seed: int = 0, data_dir=None) -> dict[str, pd.DataFrame]:
    """Load every split of every task once; return tables keyed overview / labels / lengths / token_counts / examples.

    Token lengths count prompt + target with the given tokenizer (no special tokens), which is what a
    training example costs before truncation.
    """
    overview, labels, lengths, counts, examples = [], [], [], [], []
    for name in tasks:
        task = get_task(name)
        for split, ds in _splits(name, data_dir, sample_size, seed):
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
    return {"overview": pd.DataFrame(overview), "labels": pd.DataFrame(labels), "lengths": pd.DataFrame(lengths),
            "token_counts": pd.DataFrame(counts), "examples": pd.DataFrame(examples)}
