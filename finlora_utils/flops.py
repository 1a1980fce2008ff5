"""The machine's matmul peak and the FLOPs a training step or a label-scoring pass needs (MFU).

    from finlora_utils import flops
    peak = flops.measure_peak("embedded", tokens=512, dtype=flops.compute_dtype("nf4"))
    need = flops.train_flops("embedded", [(len(e["input_ids"]), n_labels(e)) for e in examples], lora_settings)
    flops.mfu(need, wall_s, peak["peak"])

How FLOPs are counted: only what the result needs, so a recipe that pads, recomputes (gradient
checkpointing) or projects every position onto the vocabulary does not look busier than one that does not.
  - a matmul (m x k) @ (k x n) costs 2mkn; elementwise work (norms, rotary, softmax, SiLU, dropout, the
    optimizer update) is not counted: under 2 % of a step for these models.
  - projections: 2 x in x out per non-padding token, for every projection of every layer (q k v o gate up
    down; GPT-2's c_attn, c_proj, c_fc, c_proj).
  - attention, per layer: QK^T and PV over the keys a causal token needs, each 2 x heads x head_dim per
    (query, key) pair; a token at position p (0-based) has p + 1 keys, including a cached prefix's.
    Grouped-query attention shares k/v heads but every query head still does its own products.
  - LM head: 2 x hidden x vocab per position whose logits the result needs: the label positions when
    training (the kit gathers them), one per prompt plus one per extra label token when scoring, one per
    generated token when generating.
  - LoRA: 2 x r x (in + out) per token per adapted projection (A then B).
  - backward: every matmul's input gradient costs its forward again (frozen projections, attention, the
    LM head); a weight gradient only where the weight trains (LoRA's A and B: once more its forward).
    Frozen weights need no weight gradient, so a LoRA step is about 2x its forward, not the 3x of full
    finetuning. The input gradient of the first layer is counted too (peft computes it).
The pure counting functions never import torch; measure_peak does.
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

from . import hardware
from . import lora as _lora
from .config import LoraSettings

GEMM_CUBE = 2048          # the square matmul that shows a machine's practical peak
GPU_GEMM_CUBE = 8192      # ... and a GPU's
ATTN_PAIR = 4             # QK^T + PV: 2 FLOPs each per (query, key) pair per attention dim


# ---------------------------------------------------------------- counting (pure)

def _dims(model: Any) -> dict:
    cfg = _lora.model_config(model)
    shapes = _lora.linear_shapes(cfg)
    if _lora.family(cfg) == "gpt2":
        attn = _lora.hidden_size(cfg)
    else:
        h, heads = _lora.hidden_size(cfg), cfg["num_attention_heads"]
        attn = heads * (cfg.get("head_dim") or h // heads)
    return dict(cfg=cfg, layers=_lora.n_layers(cfg), hidden=_lora.hidden_size(cfg), attn=attn,
                vocab=int(cfg["vocab_size"]), shapes=shapes)


def projection_flops_per_token(model: Any) -> int:
    """Forward FLOPs of every projection of every layer for one token."""
    d = _dims(model)
    return 2 * d["layers"] * sum(i * o for i, o in d["shapes"].values())


def lora_flops_per_token(model: Any, settings: LoraSettings | None) -> int:
    """Forward FLOPs of the LoRA A and B matmuls for one token (0 without LoRA)."""
    if settings is None:
        return 0
    d = _dims(model)
    targets = _lora.target_modules(d["cfg"], settings.targets)
    return 2 * d["layers"] * settings.rank * sum(sum(d["shapes"][t]) for t in targets)


def attention_flops(model: Any, new_tokens: int, past_tokens: int = 0) -> int:
    """Forward FLOPs of causal attention for `new_tokens` tokens after `past_tokens` cached ones, all layers:
    token j (0-based among the new) sees past + j + 1 keys."""
    d = _dims(model)
    pairs = new_tokens * past_tokens + new_tokens * (new_tokens + 1) // 2
    return ATTN_PAIR * d["layers"] * d["attn"] * pairs


def head_flops(model: Any, positions: int) -> int:
    d = _dims(model)
    return 2 * d["hidden"] * d["vocab"] * positions


def forward_flops(model: Any, segments: Iterable[tuple[int, int]], head_positions: int,
                  settings: LoraSettings | None = None) -> dict:
    """Forward FLOPs by kind for segments of (new tokens, cached tokens before them) and the positions whose
    logits are needed: {'projections', 'attention', 'head', 'lora', 'total'}."""
    segments = list(segments)
    tokens = sum(n for n, _ in segments)
    out = dict(projections=projection_flops_per_token(model) * tokens,
               attention=sum(attention_flops(model, n, p) for n, p in segments),
               head=head_flops(model, head_positions),
               lora=lora_flops_per_token(model, settings) * tokens)
    out["total"] = sum(out.values())
    return out


def train_flops(model: Any, examples: Iterable[tuple], settings: LoraSettings | None) -> dict:
    """FLOPs a LoRA training pass over `examples` needs, forward and backward: 2x the frozen parts (forward +
    input gradient), 3x LoRA (+ its weight gradients). An example is (non-padding length, label positions),
    or (new tokens, tokens before them computed once for the batch, label positions) as planned_examples
    gives them with share_prefix."""
    examples = [(e[0], 0, e[1]) if len(e) == 2 else tuple(e) for e in examples]
    fwd = forward_flops(model, [(n, c) for n, c, _ in examples], sum(k for _, _, k in examples), settings)
    out = {k: 2 * v for k, v in fwd.items() if k != "total"}
    out["lora"] = 3 * fwd["lora"]
    out["forward"] = fwd["total"]
    out["total"] = sum(out[k] for k in ("projections", "attention", "head", "lora"))
    return out


def planned_examples(examples: Sequence[dict], plan: Sequence, share_prefix: bool = False) -> list[tuple]:
    """(length, label positions) of every example a train.TrainData plan feeds (steps -> micro-batches ->
    indices), once per time it is fed. With share_prefix, as a single process lays micro-batches out
    (shared_prefix.pack): per micro-batch its examples' common prefix once as (P, 0, 0), then each example as
    (its tokens after P, P, label positions)."""
    from .tokenization import IGNORE, shared_prefix_len

    def labelled(i):
        return sum(1 for t in examples[i]["labels"] if t != IGNORE)

    out = []
    for mb in (mb for step in plan for mb in step):
        ids = [examples[i]["input_ids"] for i in mb]
        p = shared_prefix_len(ids) if share_prefix else 0
        if p > 0:
            out.append((p, 0, 0))
            out += [(len(examples[i]["input_ids"]) - p, p, labelled(i)) for i in mb]
        else:
            out += [(len(examples[i]["input_ids"]), labelled(i)) for i in mb]
    return out


def score_segments(contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]],
                   share_prefix: bool = True) -> tuple[list[tuple[int, int]], int]:
    """(segments, head positions) label scoring needs: the prompts' common prefix once (share_prefix), each
    prompt's own tokens after it with one head position (every label's first token), and per label with
    more than one token its tokens but the last, each with a head position."""
    from .tokenization import common_prefix_len

    shared = min(common_prefix_len(contexts), min(len(c) for c in contexts) - 1) if share_prefix and contexts else 0
    segments = [(shared, 0)] if shared else []
    heads = 0
    for ctx, conts in zip(contexts, continuations):
        segments.append((len(ctx) - shared, shared))
        heads += 1
        for c in conts:
            if len(c) > 1:
                segments.append((len(c) - 1, len(ctx)))
                heads += len(c) - 1
    return segments, heads


def score_flops(model: Any, contexts, continuations, share_prefix: bool = True) -> dict:
    return forward_flops(model, *score_segments(contexts, continuations, share_prefix))


def generate_flops(model: Any, prompt_lens: Iterable[int], new_tokens: Iterable[int]) -> dict:
    """FLOPs greedy generation needs: a prefill per prompt (logits at its last position), then one decode step
    per further generated token, each attending to everything before it."""
    segments, heads = [], 0
    for p, g in zip(prompt_lens, new_tokens):
        if g < 1:
            continue
        segments.append((p, 0))
        segments.extend((1, p + j) for j in range(g - 1))
        heads += g
    return forward_flops(model, segments, heads)


def pipeline_bubble(stages: int, micro_batches: int) -> float:
    """Idle fraction of a GPipe / 1F1B schedule with equal stages: (p - 1) / (m + p - 1)."""
    if stages < 1 or micro_batches < 1:
        raise ValueError(f"stages={stages}, micro_batches={micro_batches}: expected both >= 1")
    return (stages - 1) / (micro_batches + stages - 1)


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Achieved FLOP/s as a fraction of the peak."""
    return flops / seconds / peak_flops_per_s if seconds > 0 and peak_flops_per_s > 0 else 0.0


# ---------------------------------------------------------------- measuring the peak (torch)

def compute_dtype(precision: str = "auto"):
    """The matmul dtype the kit trains and scores with for `precision` on this machine: fp32 for fp32, bf16 for
    bf16, and for quantized models bitsandbytes' compute dtype (bf16 only where the hardware has it)."""
    import torch

    from .config import resolve_precision
    from .models import default_compute_dtype

    precision = resolve_precision(precision)
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    return default_compute_dtype()


def best_rate(fn, flop_per_call: float, min_time_s: float = 0.3, repeats: int = 3, sync=None) -> float:
    """Best FLOP/s of `fn` over `repeats` timed blocks of >= min_time_s each, after one warm-up call (kernel
    selection, page faults); the best block counts, since on a shared machine the slow ones are someone
    else's load. `sync` (e.g. torch.cuda.synchronize) ends each block."""
    sync = sync or (lambda: None)
    fn(), sync()
    calls, best = 1, 0.0
    for _ in range(repeats):
        while True:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            dt = time.perf_counter() - t0
            if dt >= min_time_s:
                break
            calls *= 2
        best = max(best, flop_per_call * calls / dt)
    return best


def matmul_rate(m: int, k: int, n: int, dtype=None, threads: int | None = None, min_time_s: float = 0.3,
                repeats: int = 3, device: str = "cpu") -> float:
    """Best FLOP/s of (m x k) @ (k x n) over `repeats` timed blocks of >= min_time_s each (the best block: on a
    shared machine the slow ones are someone else's load), by torch's matmul and, on a CPU, by the prepacked
    linear kernel the kit infers with."""
    import torch

    from .prepack import packed_linear, supported

    dtype = dtype or torch.float32
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
        b = torch.randn(k, n, generator=g).to(device=device, dtype=dtype)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        kernels = [lambda: a @ b]
        if device == "cpu" and supported(dtype)[0]:
            # The kit's inference path lays weights out once for oneDNN (finlora_utils.prepack); that kernel
            # is often faster, and the peak is the best this machine does, whichever kernel does it.
            linear = packed_linear(b.t().contiguous(), rows_hint=m)
            kernels.append(lambda: linear(a))
        return max(best_rate(kernel, 2.0 * m * k * n, min_time_s, repeats, sync) for kernel in kernels)
    finally:
        torch.set_num_threads(old)


def projection_shapes(model: Any, tokens: int) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of each distinct projection matmul for `tokens` rows."""
    out = {}
    for name, (i, o) in _dims(model)["shapes"].items():
        if (tokens, i, o) not in out.values():
            out[name] = (tokens, i, o)
    return out


def measure_peak(model: Any = None, tokens: int = 512, dtype=None, threads: int | None = None,
                 device: str = "cpu", min_time_s: float = 0.3, repeats: int = 3) -> dict:
    """Matmul FLOP/s at 2048^3 and (with a model) at its projection shapes for `tokens` rows, in `dtype` with
    `threads` threads. 'peak' is the best of them: the figure MFU divides by."""
    import torch

    dtype = dtype or torch.float32
    # a GPU reaches its matmul peak only at larger cubes than a CPU (an H200 here: bf16 662 TFLOP/s at 2048^3, 669 at 8192^3)
    cubes = (GEMM_CUBE,) if device == "cpu" else (GEMM_CUBE, GPU_GEMM_CUBE)
    shapes = {f"{c}^3": (c,) * 3 for c in cubes}
    if model is not None:
        shapes.update({f"{name} {m}x{k}x{n}": (m, k, n) for name, (m, k, n) in projection_shapes(model, tokens).items()})
    rates = {name: matmul_rate(*mkn, dtype=dtype, threads=threads, min_time_s=min_time_s, repeats=repeats,
                               device=device) for name, mkn in shapes.items()}
    # the caps belong to the peak: a Zen 4 capped at AVX2 has another limit than the same Zen 4 uncapped
    return dict(dtype=str(dtype).replace("torch.", ""), threads=threads or torch.get_num_threads(), device=device,
                flops_per_s=rates, peak=max(rates.values()), isa_caps=hardware.isa_caps() if device == "cpu" else {})


def peak_summary(peak: dict) -> str:
    """One line: the peak and each shape's rate in GFLOP/s (TFLOP/s on a GPU)."""
    unit, scale = ("GFLOP/s", 1e9) if peak.get("device", "cpu") == "cpu" else ("TFLOP/s", 1e12)
    parts = ", ".join(f"{k} {v / scale:.0f}" for k, v in peak["flops_per_s"].items())
    caps = hardware.caps_text(peak.get("isa_caps") or {})
    return (f"matmul peak {peak['peak'] / scale:.0f} {unit} ({peak['dtype']}, {peak['threads']} threads, "
            f"{peak['device']}{caps}; {unit} by shape: {parts})")
