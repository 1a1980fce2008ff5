"""Training on a batch whose prompts share a prefix, with that prefix computed once.

    batch = shared_prefix.pack(rows, pad_id, max_len)   # None when the rows share nothing worth packing
    with shared_prefix.attention(causal_lm):
        hidden = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         **shared_prefix.forward_kwargs(batch)).last_hidden_state

Why: every FinLoRA prompt of a task starts with the same instruction (FPB: 25 of ~55 tokens), and causal
attention makes the hidden states of those positions identical in every example of a batch. Packing lays
the batch out as one sequence, the prefix once and then each example's own tokens padded to a common
length S:

    [prefix (P tokens)] [example 0 (S)] [example 1 (S)] ... [example B-1 (S)]

so every projection, norm and MLP (98 % of a step's FLOPs) runs over P + B*S rows instead of B*(P + S),
and autograd sums the prefix's gradient over the examples by itself. Only attention needs to know the
layout: the prefix attends causally to itself, and each example's tokens to the prefix plus its own earlier
tokens (B x S x (P + S) scores, not the (P + B*S)^2 of a block mask). Positions restart at P for every
example, so rotary embeddings see what the unpacked batch sees. Same loss and gradients as the padded batch
(tests/test_train.py), up to the summation order, with one difference when LoRA dropout is on: the prefix
positions draw one dropout mask for the whole batch instead of one per example.

The attention function is registered with transformers' AttentionInterface and switched on for the
packed forward only (`attention`), so every other call of the model (evaluation, generation) is untouched.
Only for decoders whose attention is plain causal softmax attention over rotary or learned positions
(`supports`): no sliding window shorter than the batch, no logit soft-capping.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .tokenization import IGNORE, PAD_MULTIPLE, padded_length, shared_prefix_len

KEY = "finlora_shared_prefix"          # the AttentionInterface / config._attn_implementation name
LAYOUT = "shared_prefix"               # the batch key holding (P, B, S)
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")   # checked: attention is the plain SDPA call


def pack(rows: list[dict], pad_id: int, max_len: int, shape: tuple[int, int] | None = None
         ) -> dict[str, torch.Tensor] | None:
    """The packed layout of `rows` (encoded examples: input_ids, labels), or None when they share no prefix
    or there is only one row (packing would save nothing). Keys: input_ids and position_ids [1, P + B*S],
    gather (the flat positions whose next token carries a label) and targets (those labels), shared_prefix
    (P, B, S). Each example keeps at least one token of its own; S is padded like collate's lengths
    (tokenization.padded_length), so a run meets few distinct shapes. `shape`: a (P, S) to lay the rows out
    with instead of their own (pipeline chunks of one micro-batch share one layout); the rows must share
    those P tokens and fit S."""
    shape = shape or layout_of(rows, max_len)
    if shape is None or len(rows) < 2:
        return None
    p, s = shape
    seqs = [r["input_ids"] for r in rows]
    if any(x[:p] != seqs[0][:p] or not p < len(x) <= p + s for x in seqs):
        raise ValueError(f"shape={shape!r}: expected rows sharing {p} prefix tokens with 1..{s} own tokens each")
    ids = torch.full((len(rows) * s + p,), pad_id, dtype=torch.long)
    ids[:p] = torch.tensor(seqs[0][:p])
    pos = positions(p, len(rows), s)
    gather, targets = [], []
    for i, r in enumerate(rows):
        start = p + i * s
        ids[start:start + len(r["input_ids"]) - p] = torch.tensor(r["input_ids"][p:])
        for t, lab in enumerate(r["labels"][1:]):   # the hidden state of token t predicts token t + 1
            if lab != IGNORE:
                gather.append(t if t < p else start + t - p)
                targets.append(lab)
    return {"input_ids": ids[None], "position_ids": pos[None], "gather": torch.tensor(gather, dtype=torch.long),
            "targets": torch.tensor(targets, dtype=torch.long),
            LAYOUT: torch.tensor([p, len(rows), s], dtype=torch.long)}


def layout_of(rows: list[dict], max_len: int) -> tuple[int, int] | None:
    """(P, S) that pack lays `rows` out with, without building it (S padded like collate's lengths); None when
    it would not pack them."""
    seqs = [r["input_ids"] for r in rows]
    p = shared_prefix_len(seqs)
    if p == 0:
        return None
    return p, padded_length(max(len(x) for x in seqs) - p, max(1, max_len - p), PAD_MULTIPLE)


def positions(p: int, b: int, s: int) -> torch.Tensor:
    """Position ids of the layout [P + B*S]: the prefix's, then P.. again for every example (what each example's
    tokens had in its own padded row)."""
    return torch.cat([torch.arange(p), torch.arange(p, p + s).repeat(b)])


def is_packed(batch: dict) -> bool:
    return LAYOUT in batch


def layout(batch: dict) -> tuple[int, int, int]:
    """(P, B, S) of a packed batch."""
    p, b, s = (int(x) for x in batch[LAYOUT])
    return p, b, s


def forward_kwargs(batch: dict) -> dict:
    """What the decoder call passes down to every attention layer (transformers forwards extra kwargs)."""
    return {LAYOUT: layout(batch)}


def supports(lm, longest: int) -> tuple[bool, str]:
    """(True, '') when `lm` (a transformers CausalLM) can train on packed batches of up to `longest` tokens per
    example, else (False, why)."""
    cfg = lm.config
    if cfg.model_type not in MODEL_TYPES:
        return False, f"model_type {cfg.model_type!r} is not one of {', '.join(MODEL_TYPES)}"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and window < longest:
        return False, f"sliding window {window} < {longest} tokens"
    if getattr(cfg, "attn_logit_softcapping", None):
        return False, "attention logit soft-capping"
    if not hasattr(lm, "set_attn_implementation"):
        return False, "the model cannot switch its attention function"
    return True, ""


def shared_prefix_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                            **kwargs):
    """transformers attention function for the packed layout: query [1, H, P + B*S, D], key/value
    [1, Hkv, P + B*S, D] (rotary already applied); returns ([1, P + B*S, H, D], None)."""
    p, b, s = kwargs[LAYOUT]
    if dropout:
        raise ValueError(f"attention dropout {dropout}: the shared-prefix layout supports none")
    gqa = query.shape[1] != key.shape[1]

    def rows(x):   # [1, h, B*S, D] -> [B, h, S, D]
        return x[:, :, p:].unflatten(2, (b, s)).squeeze(0).transpose(0, 1)

    pre = F.scaled_dot_product_attention(query[:, :, :p], key[:, :, :p], value[:, :, :p], is_causal=True,
                                         scale=scaling, enable_gqa=gqa)
    k = torch.cat([key[:, :, :p].expand(b, -1, -1, -1), rows(key)], dim=2)
    v = torch.cat([value[:, :, :p].expand(b, -1, -1, -1), rows(value)], dim=2)
    see = torch.ones(s, p + s, dtype=torch.bool, device=query.device)
    see[:, p:] = torch.ones(s, s, dtype=torch.bool, device=query.device).tril()
    own = F.scaled_dot_product_attention(rows(query), k, v, attn_mask=see, scale=scaling, enable_gqa=gqa)
    out = torch.cat([pre.transpose(1, 2), own.transpose(1, 2).reshape(1, b * s, *own.shape[1:2], own.shape[-1])],
                    dim=1)
    return out, None


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(KEY, shared_prefix_attention)
        _registered = True


@contextlib.contextmanager
def attention(lm):
    """The packed layout's attention for the model's forwards inside the block (the backward needs nothing:
    autograd recorded the forward's ops). Not with gradient checkpointing, whose recomputation runs later."""
    _register()
    before = lm.config._attn_implementation
    lm.set_attn_implementation(KEY)
    try:
        yield
    finally:
        lm.set_attn_implementation(before)
