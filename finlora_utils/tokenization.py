"""Training-time tokenization: FinLoRA's prompt + target + eos encoding with the prompt masked,
truncation that never cuts the instruction or the trailing ``Answer: ``, and length-grouped batches.

    ex = encode(tok, context, target, max_seq_len=512)   # {"input_ids", "labels", "truncated"}
    examples, truncated = encode_dataset(ds, tok, 512)    # truncated: {task: count}
    plan = batch_plan([len(e["input_ids"]) for e in examples], batch_size=8, epochs=1, seed=0)
    batch = collate([examples[i] for i in plan[0][0]], tok.pad_token_id)
"""
from __future__ import annotations

import math
import random

import torch

from .config import ConfigError
from .data import split_prompt
from .data.tasks import PROMPT_INPUT, PROMPT_INSTRUCTION

IGNORE = -100           # label of every position that carries no loss (prompt and padding)
MEGABATCH = 50          # length-sort within groups of 50 batches: grouped lengths, still a random order


class PromptTooLong(Exception):
    """The untouchable part of a prompt needs `needed` tokens, more than the budget."""

    def __init__(self, needed: int):
        super().__init__(needed)
        self.needed = needed


def target_ids(tok, target: str) -> list[int]:
    """The answer tokens + eos: what carries a label (FinLoRA: target tokenized alone, no special tokens)."""
    return tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def _droppable_span(context: str) -> tuple[int, int] | None:
    """Characters of the Input text, the only part truncation may remove; None for FinLoRA's native
    prompts (XBRL, formula, financebench), which have no Input field."""
    try:
        instruction, text = split_prompt(context)
    except ValueError:
        return None
    if not text:
        return len(context), len(context)
    start = len(PROMPT_INSTRUCTION) + len(instruction) + len(PROMPT_INPUT)   # format_prompt's layout
    return start, start + len(text)


def encode_prompt(tok, context: str, budget: int | None, mode: str = "head") -> tuple[list[int], bool]:
    """Prompt token ids within `budget` tokens, and whether they were truncated.

    The prompt is tokenized whole (so an untruncated prompt is byte-identical to the evaluator's), then
    tokens lying inside the Input text are dropped: `head` keeps its beginning, `head_tail` its beginning
    and end. Native prompts keep their head and tail (instruction first, question and 'Answer:' last).
    Raises PromptTooLong(needed) when the fixed part (instruction, 'Answer: ', special tokens) exceeds budget.
    """
    enc = tok(context, return_offsets_mapping=budget is not None)
    ids = enc["input_ids"]
    if budget is None or len(ids) <= budget:
        return ids, False
    span = _droppable_span(context)
    offsets = enc["offset_mapping"]
    if span is None:  # native prompt: everything but special tokens may go, from the middle
        inside = [i for i, (s, e) in enumerate(offsets) if e > s]
        mode = "head_tail"
    else:
        a, b = span
        inside = [i for i, (s, e) in enumerate(offsets) if e > s and s >= a and e <= b]
    n_fixed = len(ids) - len(inside)
    n_keep = budget - n_fixed
    if n_keep < (2 if span is None else 0):
        raise PromptTooLong(n_fixed + (2 if span is None else 0))
    if mode == "head":
        kept = inside[:n_keep]
    else:
        head = (n_keep + 1) // 2
        kept = inside[:head] + inside[len(inside) - (n_keep - head):]
    drop = set(inside) - set(kept)
    return [t for i, t in enumerate(ids) if i not in drop], True


def encode(tok, context: str, target: str, max_seq_len: int | None = None, truncation: str = "head") -> dict:
    """One training example: labels are IGNORE on the prompt, the token ids on target + eos."""
    tgt = target_ids(tok, target)
    budget = None if max_seq_len is None else max_seq_len - len(tgt)
    try:
        prompt, truncated = encode_prompt(tok, context, budget, truncation)
    except PromptTooLong as e:
        raise ConfigError(f"max_seq_len={max_seq_len}: expected >= {e.needed + len(tgt)}: the instruction, "
                          f"'Answer: ' and special tokens take {e.needed} tokens, the target + eos {len(tgt)}") from None
    return {"input_ids": prompt + tgt, "labels": [IGNORE] * len(prompt) + tgt, "truncated": truncated}


def encode_dataset(ds, tok, max_seq_len: int, truncation: str = "head") -> tuple[list[dict], dict[str, int]]:
    """Encode a data.load_task(s) Dataset; returns (examples, truncated count per task).

    Errors name the task and row, so a bad max_seq_len fails before any model is loaded.
    """
    examples, truncated = [], {}
    for i, row in enumerate(ds):
        task = row.get("task", "?")
        try:
            ex = encode(tok, row["context"], row["target"], max_seq_len, truncation)
        except ConfigError as e:
            raise ConfigError(f"{e} (task {task}, row {i})") from None
        ex["task"] = task
        examples.append(ex)
        truncated[task] = truncated.get(task, 0) + int(ex["truncated"])
    return examples, truncated


# Training pads each batch's length up to a multiple of this. Every new (batch, length) shape costs the CPU
# runtime new oneDNN primitives and heap that stay for the life of the process: 60 steps of the cpu preset's
# 03 run (sample FPB, lengths 67-80) grew the training peak from 292 MiB at step 1 to 524 MiB padded to the
# longest, to 354 MiB padded to 8, for 5 % fewer tokens/s (Xeon with AMX, bf16, 2026-12-02). On a GPU a
# multiple of 8 is what tensor cores want anyway.
PAD_MULTIPLE = 8


def padded_length(longest: int, max_len: int, multiple: int = PAD_MULTIPLE) -> int:
    """`longest` rounded up to `multiple`, never past max_len (nor below longest itself)."""
    return max(longest, min(max_len, -(-longest // multiple) * multiple))


def common_prefix_len(seqs) -> int:
    """Length of the longest token prefix every sequence of `seqs` starts with (0 for none)."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = seqs[0][i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


def shared_prefix_len(seqs) -> int:
    """Tokens a batch of `seqs` can compute once for all of them: their common prefix, leaving every row at
    least one token of its own; 0 for fewer than two rows (nothing to share)."""
    if len(seqs) < 2:
        return 0
    return max(0, min(common_prefix_len(seqs), min(len(s) for s in seqs) - 1))


def collate(examples: list[dict], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of this batch (dynamic padding), or to `length` when given (training
    passes padded_length(...), so a run meets few distinct shapes)."""
    n, longest = len(examples), max(len(e["input_ids"]) for e in examples)
    if length is not None:
        if length < longest:
            raise ValueError(f"length={length}: expected at least the batch's longest example ({longest} tokens)")
        longest = length
    input_ids = torch.full((n, longest), pad_id, dtype=torch.long)
    labels = torch.full((n, longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, longest), dtype=torch.long)
    for r, e in enumerate(examples):
        k = len(e["input_ids"])
        input_ids[r, :k] = torch.tensor(e["input_ids"])
        labels[r, :k] = torch.tensor(e["labels"])
        mask[r, :k] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _chunks(xs: list, n: int) -> list[list]:
    return [xs[i:i + n] for i in range(0, len(xs), n)]


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """One epoch of batches of similar length (like transformers' group_by_length): shuffle, sort within
    megabatches, shuffle the batches; the batch holding the longest example goes first so that an
    out-of-memory shows up at step 1, not at the end."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for mega in _chunks(order, batch_size * MEGABATCH):
        batches += _chunks(sorted(mega, key=lambda i: -lengths[i]), batch_size)
    rng.shuffle(batches)
    longest = max(range(len(batches)), key=lambda j: max(lengths[i] for i in batches[j]))
    batches.insert(0, batches.pop(longest))
    return batches


def batch_plan(lengths: list[int], batch_size: int, grad_accum: int = 1, epochs: float = 1.0,
               max_steps: int = 0, seed: int = 0) -> list[list[list[int]]]:
    """The whole run's data order: steps -> micro-batches -> example indices.

    Each epoch is reshuffled with seed + epoch. max_steps > 0 overrides epochs (cycling over epochs);
    fractional epochs round up to whole optimizer steps. Stored in checkpoints, so a resumed run sees
    exactly the batches the uninterrupted one would have.
    """
    if not lengths:
        raise ConfigError("max_train_samples: the training set is empty; expected at least one example")
    per_epoch = math.ceil(math.ceil(len(lengths) / batch_size) / grad_accum)
    total = max_steps if max_steps > 0 else max(1, math.ceil(epochs * per_epoch))
    steps, epoch = [], 0
    while len(steps) < total:
        steps += _chunks(length_grouped_batches(lengths, batch_size, seed + epoch), grad_accum)
        epoch += 1
    return steps[:total]


def shard(micro_batch: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's part of a micro-batch (DDP splits every global micro-batch across ranks)."""
    return micro_batch[rank::world_size]
