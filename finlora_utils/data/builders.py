"""Builders: raw upstream files -> FinLoRA-format rows ``{"context", "target"}``.

Every builder takes file paths and returns a list of dicts; no resolution, no caching (see loader.py).
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
from pathlib import Path

from .tasks import (NER_LABELS, NER_TEMPLATES, NEWS_INSTRUCTION, TWEET_INSTRUCTION, format_prompt,
                    split_prompt)

Row = dict  # {"context": str, "target": str}

# --- JSONL (FinLoRA's own files) ---------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: malformed JSON ({e.msg})") from None
                rows.append({"context": obj["context"], "target": str(obj["target"])})
    return rows


def inputs_of(rows: list[Row]) -> list[str]:
    return [split_prompt(r["context"])[1] for r in rows]


# --- FPB ----------------------------------------------------------------------------------------------------

FPB_SPLIT_SEED = 42
FPB_TEST_SIZE = 0.25


def read_fpb(path: Path) -> list[tuple[str, str]]:
    """Sentences_50Agree.txt -> [(sentence, label)] in file order ("<sentence>@<label>" per line, BOM, CRLF)."""
    text = path.read_bytes().decode("utf-8-sig")
    out = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip():
            sentence, label = line.rsplit("@", 1)
            out.append((sentence, label.strip()))
    return out


def fpb_replay_split(path: Path) -> tuple[list[int], list[int]]:
    """FinGPT/FinLoRA's FPB split replayed: ``Dataset.train_test_split(test_size=0.25, seed=42)`` over the
    4846 Sentences_50Agree sentences in file order. Returns (train indices, test indices) in split order.

    The test indices reproduce FinLoRA's fpb_test.jsonl exactly (same 1212 sentences, same order, same labels;
    tests/test_data.py::test_fpb_replay_reproduces_finlora_test pins it).
    """
    import datasets

    items = read_fpb(path)
    ds = datasets.Dataset.from_dict({"i": list(range(len(items)))})
    split = ds.train_test_split(test_size=FPB_TEST_SIZE, seed=FPB_SPLIT_SEED)
    return list(split["train"]["i"]), list(split["test"]["i"])


def build_fpb(path: Path, split: str) -> list[Row]:
    """FPB rows. ``test``: the replayed test split. ``train``: the replayed train split (3634 sentences) minus
    the 5 whose text also occurs in the test split (the file holds 8 duplicated sentences) -> 3629 rows."""
    items = read_fpb(path)
    train_idx, test_idx = fpb_replay_split(path)
    if split == "test":
        idx = test_idx
    else:
        test_text = {items[i][0] for i in test_idx}
        idx = [i for i in train_idx if items[i][0] not in test_text]
    return [{"context": format_prompt(NEWS_INSTRUCTION, items[i][0]), "target": items[i][1]} for i in idx]


# --- TFNS ---------------------------------------------------------------------------------------------------

# zeroshot/twitter-financial-news-sentiment: 0 = Bearish, 1 = Bullish, 2 = Neutral.
TFNS_LABELS = {0: "negative", 1: "positive", 2: "neutral"}
# FinLoRA's data/process_sentiment_train.py (2025) uses {0: negative, 1: neutral, 2: positive} for TFNS too:
# WRONG for this dataset, and its tfns_test.jsonl carries that error. Only for the tfns_finlora_labels variant.
TFNS_FINLORA_LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def read_tfns(path: Path) -> list[tuple[str, int]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [(r["text"], int(r["label"])) for r in csv.DictReader(f)]


def build_tfns(path: Path, mapping: dict[int, str] = TFNS_LABELS) -> list[Row]:
    return [{"context": format_prompt(TWEET_INSTRUCTION, text), "target": mapping[label]}
            for text, label in read_tfns(path)]


# --- FiQA ---------------------------------------------------------------------------------------------------


def fiqa_label(score: float) -> str:
    """FinGPT/FinLoRA's thresholds: score < -0.1 negative, -0.1 <= score < 0.1 neutral, else positive."""
    if score < -0.1:
        return "negative"
    if score < 0.1:
        return "neutral"
    return "positive"


def read_fiqa(headline_path: Path, post_path: Path) -> list[tuple[str, str, float]]:
    """The 1111 scored sentences: [(sentence, "headline"|"post", mean aspect score)], headlines first."""
    out = []
    for kind, p in (("headline", headline_path), ("post", post_path)):
        data = json.loads(Path(p).read_text(encoding="utf-8"))
        for rec in data.values():
            scores = [float(a["sentiment_score"]) for a in rec["info"]]
            out.append((rec["sentence"], kind, sum(scores) / len(scores)))
    return out


def build_fiqa_train(headline_path: Path, post_path: Path, test_rows: list[Row]) -> list[Row]:
    """All scored sentences not among the test inputs (878 = 1111 - 233 distinct test sentences)."""
    test_inputs = set(inputs_of(test_rows))
    rows = []
    for sentence, kind, score in read_fiqa(headline_path, post_path):
        if sentence in test_inputs:
            continue
        instr = TWEET_INSTRUCTION if kind == "post" else NEWS_INSTRUCTION
        rows.append({"context": format_prompt(instr, sentence), "target": fiqa_label(score)})
    return rows


# --- NER ----------------------------------------------------------------------------------------------------

NER_TYPES = {"I-PER": "person", "I-ORG": "organization", "I-LOC": "location"}


def read_conll(path: Path) -> list[list[tuple[str, str]]]:
    """CoNLL "token POS - tag" lines -> sentences of (token, tag); -DOCSTART- and blank lines separate."""
    sents, cur = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("-DOCSTART-"):
                if cur:
                    sents.append(cur)
                    cur = []
                continue
            parts = line.split(" ")
            cur.append((parts[0], parts[-1]))
    if cur:
        sents.append(cur)
    return sents


def entity_spans(sentence: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Maximal runs of one I-PER/I-ORG/I-LOC tag -> [(entity text, type)] in sentence order (I-MISC ignored)."""
    out, i = [], 0
    while i < len(sentence):
        tag = sentence[i][1]
        if tag in NER_TYPES:
            j = i
            while j < len(sentence) and sentence[j][1] == tag:
                j += 1
            out.append((" ".join(w for w, _ in sentence[i:j]), NER_TYPES[tag]))
            i = j
        else:
            i += 1
    return out


def ner_context(entity: str, options: list[str] | tuple[str, ...], sentence: str, template: int = 0) -> str:
    instr = NER_TEMPLATES[template].format(entity) + "\nOptions: " + ", ".join(options)
    return format_prompt(instr, sentence)


def ner_finlora_replay(path: Path) -> list[tuple[str, str, str, int]]:
    """FinGPT's fingpt-ner-cls construction, as observed in FinLoRA's ner_test.jsonl (replayed over FIN3 it
    reproduces all 3502 rows' sentence, entity, target and template; only the random option order differs):
    per sentence, (number of distinct entity strings) x 17 templates rows, all asking about the sentence's
    LAST entity. Returns [(sentence, entity, type, template index)]."""
    out = []
    for sent in read_conll(path):
        spans = entity_spans(sent)
        if not spans:
            continue
        text = " ".join(w for w, _ in sent)
        entity, etype = spans[-1]
        for _ in range(len({e for e, _ in spans})):
            out.extend((text, entity, etype, k) for k in range(len(NER_TEMPLATES)))
    return out


def build_ner_train(path: Path, test_rows: list[Row] | None = None, seed: int = 0) -> list[Row]:
    """One row per distinct (entity, type) of each sentence, asking about THAT entity (FinGPT's construction
    repeats the last entity instead). Template and option order are drawn from a seeded RNG. Sentences that
    occur in the test inputs are skipped."""
    rng = random.Random(seed)
    test_inputs = set(inputs_of(test_rows)) if test_rows else set()
    rows = []
    for sent in read_conll(path):
        text = " ".join(w for w, _ in sent)
        if text in test_inputs:
            continue
        for entity, etype in dict.fromkeys(entity_spans(sent)):
            options = list(NER_LABELS)
            rng.shuffle(options)
            rows.append({"context": ner_context(entity, options, text, rng.randrange(len(NER_TEMPLATES))),
                         "target": etype})
    return rows


# --- Headline (approximation) ---------------------------------------------------------------------------------

# (CSV column or "price", question). The first six use FinGPT's wording; the CSV's Past/Future Information
# columns are also 1 for headlines with no price at all, so they get the annotation guideline's wording
# ("an event in the past/future") instead of FinGPT's "price in the past/future".
HEADLINE_QUESTIONS = (
    ("price", "Does the news headline talk about price?"),
    ("Price Direction Up", "Does the news headline talk about price going up?"),
    ("Price Direction Constant", "Does the news headline talk about price staying constant?"),
    ("Price Direction Down", "Does the news headline talk about price going down?"),
    ("Asset Comparision", "Does the news headline compare gold with any other asset?"),
    ("Past Information", "Does the news headline talk about an event in the past?"),
    ("Future Information", "Does the news headline talk about an event in the future?"),
)
HEADLINE_TEST_MOD = 5  # a headline is in the test split when sha256(text) % 5 == 0 (about 20 %)


def headline_in_test(headline: str) -> bool:
    return int(hashlib.sha256(headline.encode("utf-8")).hexdigest()[:8], 16) % HEADLINE_TEST_MOD == 0


def build_headline(path: Path, split: str) -> list[Row]:
    """Gold-news headlines x 7 yes/no questions: an APPROXIMATION of FinGPT's headline task.

    How it differs from FinGPT/FinLoRA's headline_train/test.jsonl (82.2k/20.5k rows, not obtainable): those
    come from finalDataset_0208.csv, 11412 headlines x 9 questions; ours from the Kaggle derivative
    (10570 headlines) which has 6 of the 9 binary columns. "price" (FinGPT's "Price or Not") is derived as
    any of Up/Constant/Down = 1; FinGPT's PastNews/FutureNews questions have no column and are left out;
    the CSV's Past/Future Information columns are asked as "an event in the past/future" (see
    HEADLINE_QUESTIONS). FinGPT split rows at random; we split by headline (sha256 of the text, about 20 %
    test), so no headline is in both splits. Targets are "Yes"/"No" as in FinGPT."""
    with open(path, encoding="utf-8", newline="") as f:
        records = list(csv.DictReader(f, delimiter="\t"))
    rows = []
    for r in records:
        text = r["News"]
        if headline_in_test(text) != (split == "test"):
            continue
        for col, question in HEADLINE_QUESTIONS:
            if col == "price":
                yes = any(r[c] == "1" for c in ("Price Direction Up", "Price Direction Constant",
                                                "Price Direction Down"))
            else:
                yes = r[col] == "1"
            rows.append({"context": format_prompt(f"{question} Please choose an answer from {{Yes/No}}.", text),
                         "target": "Yes" if yes else "No"})
    return rows
