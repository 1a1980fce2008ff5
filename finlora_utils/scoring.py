"""Asking a model: label scoring (log-likelihood of each label continuation, with the prompt's states shared
across labels and across a batch), contextual calibration, and generation with label parsing. Prompt and
label tokens are exactly the ones training used (see BOUNDARIES)."""
from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from typing import Sequence

import numpy as np
import torch

from .metrics import EvalError
from .prepack import prepacked
from .tokenization import common_prefix_len

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021's content-free inputs
CLS_MAX_NEW_TOKENS = 10               # FinLoRA's setting for classification
EXTRACT_MAX_NEW_TOKENS = 64
MIN_EXTRA_PREFIX = 16                 # a batch prefix this much longer than the shared one gets its own KV


BOUNDARIES = ("train", "joint")


def _head_tail(ids: list[int], max_len: int | None) -> list[int]:
    if not max_len or len(ids) <= max_len:
        return ids
    head = max_len // 2
    return ids[:head] + ids[len(ids) - (max_len - head):]


def prompt_ids(tokenizer, prompt: str, max_len: int | None = None) -> tuple[list[int], bool]:
    """Prompt token ids as training sees them (truncating only the Input text, like training does)."""
    from .tokenization import PromptTooLong, encode_prompt

    try:
        return encode_prompt(tokenizer, prompt, max_len)
    except PromptTooLong as e:
        raise EvalError(f"max_len={max_len}: expected >= {e.needed}, the prompt's fixed part") from None


def split_label_tokens(tokenizer, prompt: str, labels: Sequence[str], max_len: int | None = None,
                       boundary: str = "train") -> tuple[list[int], list[list[int]]]:
    """(context ids, [continuation ids per label]).

    For "joint" the context is the longest token prefix common to all prompt+label tokenizations
    (capped so every label keeps >= 1 token), so log P(continuation | context) ranks labels exactly as
    log P(prompt+label) does. A label whose tokens are a prefix of another's gets EOS appended to every
    label, otherwise the shorter one could never lose.
    """
    if boundary not in BOUNDARIES:
        raise EvalError(f"boundary={boundary!r}: expected one of {', '.join(BOUNDARIES)}")
    if boundary == "train":
        ctx, _ = prompt_ids(tokenizer, prompt, max_len)
        conts = [tokenizer(lab, add_special_tokens=False)["input_ids"] for lab in labels]
    else:
        joint = [tokenizer(prompt + lab)["input_ids"] for lab in labels]
        k = min(common_prefix_len(joint), min(len(j) for j in joint) - 1)
        if k < 1:
            raise EvalError(f"prompt: the tokenizer merges the whole prompt into the label; prompt={prompt[:60]!r}")
        ctx, conts = _head_tail(joint[0][:k], max_len), [j[k:] for j in joint]
    if any(not c for c in conts):
        raise EvalError(f"labels={list(labels)!r}: expected labels that tokenize to at least one token")
    if tokenizer.eos_token_id is not None and any(
            len(a) < len(b) and b[:len(a)] == a for a in conts for b in conts):
        conts = [c + [tokenizer.eos_token_id] for c in conts]
    return ctx, conts


# --------------------------------------------------------------------------------------------------
# Scoring

def _layout(model, prepack: bool | None, forwards: int):
    """The weight layout a call computes with: prepacked (True), plain (False), or prepacked when `forwards`
    repay it (None)."""
    if prepack is False:
        return contextlib.nullcontext()
    return prepacked(model, forwards=None if prepack else forwards)


def _device(model) -> torch.device:
    return next(p.device for p in model.parameters())


def _make_cache(layers):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers)


@torch.no_grad()
def _prefix_cache(model, ids: list[int], device):
    """KV of a shared prefix, batch 1, as a list of (k, v) per layer (never mutated afterwards)."""
    out = model(input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1)
    return [(k, v) for k, v, *_ in out.cache]


@torch.no_grad()
def _score_batch(model, ctx: list[list[int]], conts: list[list[list[int]]], prefix_kv_fn, pad_id: int) -> np.ndarray:
    """Log-likelihood of each label continuation for one batch; returns (B, L).

    Layout: [shared prefix, cached once] [per-example suffix, left-padded] -> logits of the last
    position give every label's first token; labels with more tokens take a second forward over
    [continuation tokens] with the suffix cache repeated per label.
    """
    dev = _device(model)
    B, L = len(ctx), len(conts[0])
    # Shared prefix: the common tokens of the batch, leaving each example >= 1 suffix token.
    s, kv = prefix_kv_fn(ctx)
    suf = [c[s:] for c in ctx]
    T = max(len(x) for x in suf)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, s + T), dtype=torch.long)
    mask[:, :s] = 1
    pos = torch.full((B, T), s, dtype=torch.long)
    for i, x in enumerate(suf):
        ids[i, T - len(x):] = torch.tensor(x)
        mask[i, s + T - len(x):] = 1
        pos[i, T - len(x):] = torch.arange(s, s + len(x))
    cache = _make_cache([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in kv]) if kv else None
    with _head_input(model) as head:
        out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                    cache=cache, use_cache=True, logits_to_keep=1)
    rows = torch.arange(B).repeat_interleave(L)
    scores = _label_logprobs(head, out.logits, rows, torch.zeros_like(rows),
                             [c[0] for row in conts for c in row]).view(B, L).double().numpy()
    T2 = max(len(c) for row in conts for c in row) - 1
    if T2 == 0:  # every label is one token: one forward was enough
        return scores
    # Second stage: feed continuation tokens c[:-1] (each predicts the next), B*L rows.
    cache2 = out.cache
    cache2.batch_repeat_interleave(L)
    ids2 = torch.full((B * L, T2), pad_id, dtype=torch.long)
    mask2 = torch.zeros((B * L, T2), dtype=torch.long)
    base_pos = torch.tensor([s + len(x) for x in suf]).repeat_interleave(L)
    for r in range(B * L):
        c = conts[r // L][r % L][:-1]
        if c:
            ids2[r, :len(c)] = torch.tensor(c)
            mask2[r, :len(c)] = 1
    pos2 = base_pos[:, None] + torch.arange(T2)[None, :]
    full_mask = torch.cat([mask.repeat_interleave(L, dim=0), mask2], dim=1)
    with _head_input(model) as head:
        out2 = model(input_ids=ids2.to(dev), attention_mask=full_mask.to(dev), position_ids=pos2.to(dev),
                     cache=cache2, use_cache=False)
    need = [(r, t - 1, conts[r // L][r % L][t]) for r in range(B * L) for t in range(1, len(conts[r // L][r % L]))]
    r2, t2, tok2 = (list(x) for x in zip(*need))
    more = _label_logprobs(head, out2.logits, torch.tensor(r2), torch.tensor(t2), tok2).double().numpy()
    np.add.at(scores, (np.array(r2) // L, np.array(r2) % L), more)
    return scores


@contextlib.contextmanager
def _head_input(model):
    """Captures what the LM head reads in the block's forward ({'h': hidden states, 'head': the module})."""
    head = model.get_output_embeddings()
    got = {"head": head}
    w = getattr(head, "weight", None)
    if getattr(model.config, "final_logit_softcapping", None) or w is None or not w.dtype.is_floating_point:
        yield {}   # the logits are not the head's output alone: score them as they are
        return
    handle = head.register_forward_hook(lambda m, args, out: got.__setitem__("h", args[0]))
    try:
        yield got
    finally:
        handle.remove()


def _label_logprobs(head: dict, logits: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor,
                    tokens: list[int]) -> torch.Tensor:
    """log P(token) at logits[rows, pos] for each (row, position, token), in fp32, returned on the CPU.

    The label tokens' own logits are recomputed in fp32 from the head's input: in bf16 a logit near 10-30 is
    rounded to 1/16-1/8, so two labels tie exactly (6 of 200 FPB prompts with the embedded model) and argmax
    gives the tie to whichever label comes first. The normalizer, common to every label at a position, keeps
    the model's logits."""
    norm = torch.logsumexp(logits.float(), dim=-1)[rows.to(logits.device), pos.to(logits.device)]
    ids = torch.tensor(tokens, device=logits.device)
    if "h" not in head:
        return (logits[rows.to(logits.device), pos.to(logits.device), ids].float() - norm).cpu()
    at = head["h"].device
    ids = ids.to(at)
    exact = (head["h"][rows.to(at), pos.to(at)].float() * head["head"].weight[ids].float()).sum(-1)
    if getattr(head["head"], "bias", None) is not None:
        exact = exact + head["head"].bias[ids].float()
    return (exact.to(norm.device) - norm).cpu()


def score_labels(model, tokenizer, prompts: Sequence[str], labels: Sequence[str], batch_size: int = 8,
                 max_len: int | None = None, boundary: str = "train", share_prefix: bool = True,
                 prepack: bool | None = None) -> np.ndarray:
    """(len(prompts), len(labels)) matrix of log P(label | prompt), summed over the label's tokens.

    Batched, with the prompts' shared prefix (the task instruction) run once per batch and its KV
    cache expanded over the batch (share_prefix=False: plain forwards, for comparison). Results do not
    depend on batch size beyond float rounding. prepack: CPU linear weights laid out once for oneDNN
    (finlora_utils.prepack): None when the call makes enough forwards to repay it, True always, False never.
    """
    if batch_size < 1:
        raise EvalError(f"batch_size={batch_size!r}: expected an integer >= 1")
    if not labels:
        raise EvalError("labels=[]: expected the task's label set (at least one label)")
    split = [split_label_tokens(tokenizer, p, labels, max_len, boundary) for p in prompts]
    # Longest first, so padding stays small and the first batch shows the peak memory.
    order = sorted(range(len(prompts)), key=lambda i: -len(split[i][0]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = _device(model)
    ctxs = [c for c, _ in split]
    # The prefix every prompt shares (the task instruction) is run once; a batch whose prompts share a
    # clearly longer prefix (NER's per-entity templates) gets its own, computed once per batch.
    shared = tuple(ctxs[0][:common_prefix_len(ctxs)]) if share_prefix and ctxs else ()
    memo = {}

    def prefix_kv(ctx: list[list[int]]):
        """(length, KV) of a prefix common to the whole batch, leaving each prompt >= 1 own token."""
        s = min(common_prefix_len(ctx), min(len(c) for c in ctx) - 1) if share_prefix else 0
        if shared and len(shared) <= s < len(shared) + MIN_EXTRA_PREFIX:
            return len(shared), memo[shared]
        if s == 0:
            return 0, None
        key = tuple(ctx[0][:s])
        if key not in memo:
            for k in [k for k in memo if k != shared]:  # keep the shared prefix and one batch prefix
                del memo[k]
            memo[key] = _prefix_cache(model, list(key), dev)
        return s, memo[key]

    out = np.zeros((len(prompts), len(labels)))
    was_training = model.training
    model.eval()
    try:
        batches = -(-len(prompts) // batch_size)
        with _layout(model, prepack, batches):
            if shared:
                memo[shared] = _prefix_cache(model, list(shared), dev)
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                ctx, conts = [split[i][0] for i in idx], [split[i][1] for i in idx]
                out[idx] = _score_batch(model, ctx, conts, prefix_kv, pad_id)
    finally:
        model.train(was_training)
    return out


def label_probabilities(model, tokenizer, prompts: Sequence[str], labels: Sequence[str], batch_size: int = 8,
                        max_len: int | None = None, boundary: str = "train") -> np.ndarray:
    """(len(prompts), len(labels)) probabilities: softmax over the labels of score_labels, the `score`
    protocol's own numbers (its argmax is the label `evaluate(mode="score")` predicts). For new text (predict)."""
    from .models import contiguous_head, fix_bnb_cpu

    fix_bnb_cpu(model)
    contiguous_head(model)
    with quiet_bnb_int8():
        sc = score_labels(model, tokenizer, prompts, labels, batch_size, max_len, boundary)
    return np.exp(sc - np.logaddexp.reduce(sc, axis=1, keepdims=True))


# --------------------------------------------------------------------------------------------------
# Generation (the paper's protocol)

def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label word that occurs first in `text` (case-insensitive, whole words); longest wins a tie.

    Unlike FinLoRA's parser (which falls back to 'neutral'), no match returns None: counted wrong.
    """
    low = (text or "").lower()
    best = None
    for lab in labels:
        m = re.search(r"(?<![a-z])" + re.escape(lab.lower()) + r"(?![a-z])", low)
        if m and (best is None or (m.start(), -len(lab)) < (best[0], -len(best[1]))):
            best = (m.start(), lab)
    return best[1] if best else None


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: Sequence[str], batch_size: int = 8,
                   max_new_tokens: int = CLS_MAX_NEW_TOKENS, max_len: int | None = None,
                   prepack: bool | None = None) -> list[str]:
    """Greedy continuations with left padding and attention masks (batch-size independent); prepack as in
    score_labels."""
    if batch_size < 1:
        raise EvalError(f"batch_size={batch_size!r}: expected an integer >= 1")
    dev = _device(model)
    enc = [prompt_ids(tokenizer, p, max_len)[0] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(enc[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with _layout(model, prepack, -(-len(prompts) // batch_size) * max_new_tokens):
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                T = max(len(enc[i]) for i in idx)
                ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), T), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, T - len(enc[i]):] = torch.tensor(enc[i])
                    mask[r, T - len(enc[i]):] = 1
                gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                     max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None,
                                     top_p=None, top_k=None, pad_token_id=pad_id, use_cache=True)
                for r, i in enumerate(idx):
                    texts[i] = tokenizer.decode(gen[r, T:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return texts


# --------------------------------------------------------------------------------------------------
# Calibration (Zhao et al. 2021)

def calibrate(model, tokenizer, prompts: Sequence[str], labels: Sequence[str], scores: np.ndarray,
              batch_size: int = 8, max_len: int | None = None, boundary: str = "train") -> tuple[np.ndarray, dict]:
    """Calibrated log-scores: log softmax(scores) - log p_cf, p_cf the mean label distribution the
    prompt template gives content-free inputs. One p_cf per distinct instruction."""
    from . import data

    instr = [data.split_prompt(p)[0] for p in prompts]
    distinct = list(dict.fromkeys(instr))
    cf_prompts = [data.format_prompt(ins, cf) for ins in distinct for cf in CONTENT_FREE]
    cf = score_labels(model, tokenizer, cf_prompts, labels, batch_size, max_len, boundary)
    cf = np.exp(cf - np.logaddexp.reduce(cf, axis=1, keepdims=True))  # per-prompt label distribution
    p_cf = cf.reshape(len(distinct), len(CONTENT_FREE), len(labels)).mean(axis=1)
    row = {ins: k for k, ins in enumerate(distinct)}
    logp = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
    cal = logp - np.log(np.stack([p_cf[row[i]] for i in instr]) + 1e-12)
    common = Counter(instr).most_common(1)[0][0]
    return cal, {"instructions": len(distinct), "content_free": list(CONTENT_FREE),
                 "p_cf": dict(zip(labels, map(float, p_cf[row[common]])))}


# --------------------------------------------------------------------------------------------------
# One task


@contextlib.contextmanager
def quiet_bnb_int8():
    """bitsandbytes logs on every int8 matmul that its (fp32 or bf16) inputs are cast to fp16: the design."""
    log = logging.getLogger("bitsandbytes.autograd._functions")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
