"""A small SYNTHETIC sample set, made from templates by this code (never copied from any dataset).

Used only when no real data is reachable, for the sentiment tasks of the default study, so notebooks and
smoke runs work offline. Every row loaded from it has ``source == "sample"``. Labels follow the templates
(a sentence built from a "rose 12 %" template is positive), so they are plausible, not annotated.

``python -m finlora_utils.data sample [--out DIR]`` writes it; the loader generates it on first use.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

from .tasks import NEWS_INSTRUCTION, NWGI_INSTRUCTION, TWEET_INSTRUCTION, format_prompt

SAMPLE_VERSION = 1
SAMPLE_TASKS = ("fpb", "fiqa", "tfns", "nwgi")
N_TRAIN, N_TEST = 240, 60

_COMPANIES = ("Norvik Metals", "Alder Bay Foods", "Kestrel Software", "Halvard Shipping", "Tamsin Retail",
              "Brightwater Energy", "Oakmere Bank", "Lumen Paperworks", "Corvell Telecom", "Estrella Mining",
              "Pinegate Logistics", "Ravel Pharma", "Sundberg Construction", "Marlow Insurance", "Vesta Foods")
_TICKERS = ("NVKM", "ABFD", "KSTL", "HLVS", "TMSN", "BWEN", "OAKB", "LUMP", "CRVT", "ESTM", "PGLX", "RVLP",
            "SNDB", "MRLW", "VSTF")
_METRICS = ("net sales", "operating profit", "revenue", "net profit", "order intake", "EBITDA")
_PERIODS = ("the first quarter", "the second quarter", "the third quarter", "2023", "the first half of 2024")
_CITIES = ("Helsinki", "Oslo", "Tallinn", "Gothenburg", "Riga", "Turku")
_UP = ("rose", "increased", "grew", "climbed", "jumped")
_DOWN = ("fell", "decreased", "declined", "dropped", "slumped")

_FPB = {
    "positive": ("{c} said its {m} {up} by {p} % to EUR {a} mn in {t} .",
                 "{c} won a EUR {a} mn order from a customer in {city} .",
                 "{c} 's {m} {up} to EUR {a} mn , compared with EUR {b} mn a year earlier ."),
    "negative": ("{c} said its {m} {down} by {p} % to EUR {a} mn in {t} .",
                 "{c} will cut {n} jobs at its plant in {city} .",
                 "{c} 's {m} {down} to EUR {b} mn from EUR {a} mn a year earlier ."),
    "neutral": ("{c} will publish its interim report for {t} on {d} .",
                "{c} is headquartered in {city} and employs about {n} people .",
                "The shares of {c} are listed on the exchange in {city} ."),
}
_TWEETS = {
    "positive": ("${k} - {c} shares jump after earnings beat", "{c} raises full-year outlook ${k}",
                 "${k} upgraded to buy at a broker, target raised to ${a}"),
    "negative": ("${k} - {c} shares slide after profit warning", "{c} cuts guidance as demand weakens ${k}",
                 "${k} downgraded to sell, target cut to ${a}"),
    "neutral": ("{c} to report results on {d} ${k}", "${k} - {c} names new chief financial officer",
                "{c} schedules investor day in {city} ${k}"),
}
_NWGI = {
    "strong positive": "{c} stock soars {big} % after record quarter and raised guidance",
    "moderately positive": "{c} shares rise {mid} % as {m} beats estimates",
    "mildly positive": "{c} edges up {small} % in quiet trading",
    "neutral": "{c} to hold its annual shareholder meeting on {d}",
    "mildly negative": "{c} slips {small} % in quiet trading",
    "moderately negative": "{c} shares fall {mid} % as {m} misses estimates",
    "strong negative": "{c} stock plunges {big} % after profit warning and CEO exit",
}


def _fill(rng: random.Random, template: str) -> str:
    i = rng.randrange(len(_COMPANIES))
    a = round(rng.uniform(5, 900), 1)
    return template.format(
        c=_COMPANIES[i], k=_TICKERS[i], m=rng.choice(_METRICS), t=rng.choice(_PERIODS), city=rng.choice(_CITIES),
        up=rng.choice(_UP), down=rng.choice(_DOWN), p=round(rng.uniform(2, 40), 1), a=a,
        b=round(a * rng.uniform(0.5, 0.9), 1), n=rng.randrange(20, 900), d=f"{rng.randrange(1, 29)} "
        f"{rng.choice(('March', 'May', 'August', 'October'))}", big=rng.randrange(15, 40),
        mid=round(rng.uniform(3, 9), 1), small=round(rng.uniform(0.1, 0.9), 1))


def _row(task: str, i: int, rng: random.Random) -> dict:
    if task == "nwgi":
        label = list(_NWGI)[i % len(_NWGI)]
        return {"context": format_prompt(NWGI_INSTRUCTION, _fill(rng, _NWGI[label])), "target": label}
    label = ("neutral", "positive", "neutral", "negative", "positive")[i % 5]  # FPB-like skew to neutral
    tweet = task == "tfns" or (task == "fiqa" and i % 2 == 1)
    template = rng.choice((_TWEETS if tweet else _FPB)[label])
    instr = TWEET_INSTRUCTION if tweet else NEWS_INSTRUCTION
    return {"context": format_prompt(instr, _fill(rng, template)), "target": label}


def _rows(task: str, n: int, rng: random.Random) -> list[dict]:
    """n rows with distinct contexts (so the train and test splits never share a sentence)."""
    rows, seen, i = [], set(), 0
    while len(rows) < n:
        r = _row(task, i, rng)
        if r["context"] not in seen:
            seen.add(r["context"])
            rows.append(r)
            i += 1
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sample_file(out_dir: Path, task: str, split: str) -> Path:
    return Path(out_dir) / f"{task}_{split}.jsonl"


def generate(out_dir: Path, seed: int = 0) -> Path:
    """Write ``<task>_<split>.jsonl`` for SAMPLE_TASKS (NWGI: test only) plus a README; deterministic."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in SAMPLE_TASKS:
        rng = random.Random(f"{seed}-{task}")
        rows = _rows(task, N_TRAIN + N_TEST, rng)
        rng.shuffle(rows)
        if task != "nwgi":
            _write_jsonl(sample_file(out_dir, task, "train"), rows[:N_TRAIN])
        _write_jsonl(sample_file(out_dir, task, "test"), rows[N_TRAIN:] if task != "nwgi" else rows)
    (out_dir / "README.txt").write_text(
        "SYNTHETIC SAMPLE DATA - NOT REAL. Template-made sentences written by finlora_utils/data/sample.py "
        f"(version {SAMPLE_VERSION}, seed {seed}) so the kit runs without the real datasets. Results on it say "
        "nothing about FinLoRA. Loaded rows carry source='sample'.\n", encoding="utf-8")
    (out_dir / "VERSION").write_text(f"{SAMPLE_VERSION}\n", encoding="utf-8")
    return out_dir


def ensure(out_dir: Path) -> Path:
    """Generate the sample set unless an up-to-date one is there."""
    v = Path(out_dir) / "VERSION"
    if not (v.exists() and v.read_text().strip() == str(SAMPLE_VERSION)):
        generate(out_dir)
    return Path(out_dir)
