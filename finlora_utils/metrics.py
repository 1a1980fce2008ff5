"""Metrics of an evaluation: pure functions of gold and predicted labels or texts (scikit-learn where it
has the metric), no model. Metrics come from scikit-learn with (y_true, y_pred) in that order: FinLoRA's
2024 code had them swapped."""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

UNPARSEABLE = "<unparseable>"


class EvalError(ValueError):
    """Bad evaluation input; the message names the parameter and what is expected."""


# --------------------------------------------------------------------------------------------------
# Metrics

def classification_metrics(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> dict:
    """accuracy, weighted/macro F1, per-class P/R, confusion matrix, prediction distribution, majority baseline.

    `pred` may hold None (unparseable): it counts as wrong and never as any label.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    if len(gold) != len(pred):
        raise EvalError(f"pred: expected {len(gold)} predictions (one per gold label), got {len(pred)}")
    if len(gold) == 0:
        raise EvalError("dataset: expected at least one example, got 0")
    labels = list(labels)
    pred = [UNPARSEABLE if p is None else p for p in pred]
    gold = list(gold)
    # sklearn order is (y_true, y_pred); weighted F1 weights classes by their *gold* support.
    f1w = f1_score(gold, pred, labels=labels, average="weighted", zero_division=0)
    # macro over the labels the test sample has or the model answered (sklearn's own default): a label with
    # neither would enter the mean as an F1 of 0 that says nothing about the model
    seen = set(gold) | set(pred)
    f1m = f1_score(gold, pred, labels=[x for x in labels if x in seen] or labels, average="macro", zero_division=0)
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    cm_labels = labels + ([UNPARSEABLE] if UNPARSEABLE in pred else [])
    extra = sorted(set(gold) - set(labels))  # gold outside the label set: show it, never hide it
    cm_labels += extra
    gold_counts = Counter(gold)
    majority_label, majority_n = max(gold_counts.items(), key=lambda kv: (kv[1], kv[0] in labels))
    return {
        "n": len(gold),
        "accuracy": float(accuracy_score(gold, pred)),
        "f1_weighted": float(f1w),
        "f1_macro": float(f1m),
        "labels": labels,
        "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(s[i])} for i, lab in enumerate(labels)},
        "confusion": confusion_matrix(gold, pred, labels=cm_labels).tolist(),  # rows gold, cols pred
        "confusion_labels": cm_labels,
        "pred_distribution": dict(sorted(Counter(pred).items())),
        "gold_distribution": dict(sorted(gold_counts.items())),
        "majority_label": majority_label,
        "majority_baseline": majority_n / len(gold),
        "majority_f1_weighted": float(f1_score(gold, [majority_label] * len(gold), labels=labels,
                                               average="weighted", zero_division=0)),
        "unparseable": sum(1 for x in pred if x == UNPARSEABLE),
    }


FINLORA_DELIMITER = "Answer:"   # FinLoRA keeps the decoded text after the last "Answer:" (test/inference.py)


def finlora_response(output: str, gold: str, gold_labels: Sequence[str]) -> tuple[bool, str]:
    """FinLoRA's per-answer rule (wangd12rpi/FinLoRA test/test_dataset.py, evaluate_accuracy at 18f817e):
    the gold label set (lower-cased) is searched in the lower-cased output as plain substrings; the label
    that occurs first decides (a tie - one label a prefix of another at the same place - goes to the longest,
    where FinLoRA's order is that of a Python set). Correct: (True, gold); wrong: (False, the raw output)."""
    raw = str(output).split(FINLORA_DELIMITER)[-1].strip()
    low = raw.lower()
    found = [(low.find(lab.lower()), -len(lab), lab.lower()) for lab in gold_labels if lab.lower() in low]
    ok = bool(found) and min(found)[2] == str(gold).lower()
    return ok, (gold if ok else raw)


def f1_weighted_finlora(gold: Sequence[str], outputs: Sequence[str]) -> dict:
    """FinLoRA's accuracy and weighted F1: every wrong answer is replaced by the model's raw output before
    scikit-learn's f1_score(gold, responses, average='weighted').

    A raw output that is no gold label becomes a class of its own with no gold support, so it lowers the
    recall of the gold class but the precision of no real class, and its weight is 0: this F1 runs above the
    plain weighted F1 (and above accuracy) whenever wrong answers are free text. The paper's F1 is this
    number; compare it only with this one. With label scoring every output *is* a label, so the rule changes
    nothing and it equals sklearn's weighted F1 over the labels that occur.
    """
    from sklearn.metrics import f1_score

    if len(gold) != len(outputs):
        raise EvalError(f"outputs: expected {len(gold)} outputs (one per gold label), got {len(outputs)}")
    if len(gold) == 0:
        raise EvalError("dataset: expected at least one example, got 0")
    gold = [str(g) for g in gold]
    labels = sorted(set(gold))   # FinLoRA: list(set(target_list)) - the labels of the test file
    judged = [finlora_response(o, g, labels) for o, g in zip(outputs, gold)]
    responses = [r for _, r in judged]
    return {"accuracy_finlora": sum(ok for ok, _ in judged) / len(gold),
            "f1_weighted_finlora": float(f1_score(gold, responses, average="weighted", zero_division=0))}


_NUM = re.compile(r"[-+]?\$?\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def parse_number(text: str) -> float | None:
    """The first number in `text` ('$1,234.5' -> 1234.5; '12%' -> 12.0), else None."""
    m = _NUM.search(text or "")
    if not m:
        return None
    try:
        return float(m.group(0).replace("$", "").replace(",", ""))
    except ValueError:
        return None


_WHOLE_NUM = re.compile(r"\s*[-+]?\$?\s*(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*%?\s*\.?\s*")


def gold_number(text: str) -> float | None:
    """The value of a gold answer that *is* a number ('$1,234.5', '12%', '1832.'), else None.

    A number inside a sentence, a formula or a tag name ('... in 2019 ...', '(6226 / 38542) * 100',
    'StockRepurchaseProgramAuthorizedAmount1') is text: crediting a prediction that merely contains it
    would reward echoing the prompt.
    """
    return parse_number(text) if _WHOLE_NUM.fullmatch(text or "") else None


def _norm_text(s: str) -> str:
    return re.sub(r"\s+", " ", (s or "").strip().strip(".").strip().lower())


def _token_f1(gold: str, pred: str) -> float:
    g, p = _norm_text(gold).split(), _norm_text(pred).split()
    common = sum((Counter(g) & Counter(p)).values())
    if not g or not p or not common:
        return float(g == p)
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def _batched_items(gold: str, pred: str) -> tuple[int, int]:
    """FinLoRA's FiNER/FNXL rule: split both on ',' and compare item by item; (correct, gold items)."""
    g = [x.strip().lower() for x in gold.split(",")]
    p = [x.strip().lower() for x in (pred or "").split(",")]
    return sum(a == b for a, b in zip(g, p)), len(g)


def extraction_metrics(gold: Sequence[str], pred: Sequence[str], rel_tol: float = 0.01,
                       abs_tol: float = 0.01, batched: bool = False) -> dict:
    """Exact match (whitespace/case/trailing-period normalised), numeric-tolerance accuracy, token F1.

    Numeric accuracy applies where the gold answer is a number (gold_number): the first number of the
    prediction is compared with math.isclose(rel_tol, abs_tol); `numeric_gold` counts those examples.
    `accuracy` counts an example right if it matches exactly or numerically. With batched=True
    (FiNER/FNXL), `accuracy` is the item-level accuracy of comma-separated answers instead.
    """
    if len(gold) != len(pred):
        raise EvalError(f"pred: expected {len(gold)} predictions, got {len(pred)}")
    if len(gold) == 0:
        raise EvalError("dataset: expected at least one example, got 0")
    n = len(gold)
    em = [_norm_text(g) == _norm_text(p) for g, p in zip(gold, pred)]
    num_ok, num_gold = [], 0
    for g, p in zip(gold, pred):
        gv, pv = gold_number(g), parse_number(p)
        num_gold += gv is not None
        num_ok.append(gv is not None and pv is not None and math.isclose(gv, pv, rel_tol=rel_tol, abs_tol=abs_tol))
    out = {"n": n, "exact_match": sum(em) / n, "numeric_accuracy": sum(num_ok) / n, "numeric_gold": num_gold,
           "numeric_rel_tol": rel_tol, "numeric_abs_tol": abs_tol,
           "token_f1": sum(_token_f1(g, p) for g, p in zip(gold, pred)) / n,
           "accuracy": sum(a or b for a, b in zip(em, num_ok)) / n,
           "empty_outputs": sum(1 for p in pred if not (p or "").strip())}
    if batched:
        items = [_batched_items(g, p) for g, p in zip(gold, pred)]
        out["accuracy"] = sum(c for c, _ in items) / max(1, sum(t for _, t in items))
        out["batched_items"] = sum(t for _, t in items)
    return out


def collapse_nwgi(gold: Sequence[str], pred: Sequence[str | None]) -> dict:
    """NWGI's 7 classes collapsed to negative/neutral/positive (both sides mapped the same way)."""
    from . import data

    def to3(x):
        return None if x is None or x == UNPARSEABLE else data.nwgi_to_3class(x)

    return classification_metrics([to3(g) for g in gold], [to3(p) for p in pred],
                                  ["negative", "neutral", "positive"])


# --------------------------------------------------------------------------------------------------
# Tokenization. Two boundaries between prompt and label:
#   "train" (default): the prompt tokenized whole (ending in the token of the space after "Answer:"),
#            then the label tokenized alone - byte-identical to what finlora_utils.tokenization feeds
#            training (FinLoRA's encoding) and to the tokens `generate` continues from.
#   "joint": prompt+label tokenized as one string (SmolLM2/Llama merge that space into the label's
#            first token): the natural text a base model saw in pretraining.
