"""Inference on CPU with every plain linear layer's weight laid out once for oneDNN (prepacked).

    from finlora_utils import prepack
    with prepack.prepacked(model) as info:    # no-grad forwards inside: scoring, generate
        model.generate(...)

A plain ``F.linear`` hands oneDNN a row-major weight, which it re-lays into its blocked (bf16: VNNI) format
on every call. Inference reads each weight hundreds of times, so the kit lays each one out once, for as long
as the block runs, and calls the same oneDNN kernel PyTorch's own compiler (inductor, with freezing) calls
for a frozen linear layer. Measured on a Zen 4 EPYC (2 threads, bf16, the embedded model's projections,
30 different weights in turn as in a forward): 1.1-1.4x at 104-288 rows, ~2x at the 8 rows of a decode step,
fp32 1.6x at 288 rows; label scores bit-identical in bf16. The prepacked copy costs as much memory as the
weights it covers, so it is made only where that fits easily (below half of the memory available now);
otherwise the block runs the plain path. Only ``torch.nn.Linear`` modules with CPU fp32/bf16 weights are
laid out (bitsandbytes' 4/8-bit layers keep their own kernels; peft's LoRA layers keep their adapters and
reach a prepacked base layer). Forwards that record gradients take the plain path, so training is untouched.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch

from .memory import available_bytes

log = logging.getLogger(__name__)

ROWS_HINT = 256          # rows oneDNN lays the weight out for; measured 8-288 rows alike within noise
MEMORY_SHARE = 0.5       # prepack only when the copy needs under this share of the memory available now
# Laying the embedded model's 211 weights out takes ~0.14 s, what ~8 batch forwards save; below this many
# forwards a call was measured no faster (Zen 4, bf16: 64 prompts at batch 8, 0.96x; 200 prompts, 1.10x).
MIN_FORWARDS = 16


def _ops():
    mk = getattr(torch.ops, "mkldnn", None)
    if mk is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        return mk._reorder_linear_weight, mk._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def supported(dtype: torch.dtype) -> tuple[bool, str]:
    """(whether weights of `dtype` can be prepacked on this CPU, why not)."""
    if _ops() is None:
        return False, "this torch build has no oneDNN linear kernels"
    if dtype == torch.float32:
        return True, ""
    if dtype == torch.bfloat16:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True, ""
        return False, "oneDNN has no bf16 kernel for this CPU"
    return False, f"{str(dtype).replace('torch.', '')} weights are not prepacked"


def candidates(model) -> list[torch.nn.Linear]:
    """The modules prepacked(model) would lay out: plain torch.nn.Linear with a CPU fp32/bf16 weight."""
    out = []
    for m in model.modules():
        w = getattr(m, "weight", None)
        if type(m) is torch.nn.Linear and w is not None and w.device.type == "cpu" and supported(w.dtype)[0]:
            out.append(m)
    return out


def _onednn_linear(weight: torch.Tensor):
    """x (any leading dimensions), bias=None -> x @ weight.T + bias by oneDNN's linear kernel on `weight`."""
    _, linear_op = _ops()

    def linear(x, bias=None):
        y = linear_op(x.reshape(-1, x.shape[-1]), weight, bias, "none", [], "")
        return y.reshape(*x.shape[:-1], y.shape[-1])

    return linear


def packed_linear(weight: torch.Tensor, rows_hint: int = ROWS_HINT):
    """A function x -> x @ weight.T (no gradients) with `weight` ([out, in], CPU fp32/bf16) laid out once for
    oneDNN; x may have any leading dimensions, and a bias may be passed."""
    reorder, _ = _ops()
    return _onednn_linear(reorder(weight.detach(), rows_hint))


def dense_linear(weight: torch.Tensor):
    """The same oneDNN kernel on `weight` as it is (any strides, not laid out), to compare oneDNN with torch's
    own matmul, which in fp32 on CPU is MKL (bench/linear_kernels.py)."""
    return _onednn_linear(weight.detach())


def _forward(module: torch.nn.Linear, plain, linear):
    bias = module.bias.detach() if module.bias is not None else None

    def forward(x, *args, **kwargs):   # the extra arguments a wrapper may pass on go to the plain path
        if args or kwargs or torch.is_grad_enabled() or x.dtype != module.weight.dtype or x.device.type != "cpu":
            return plain(x, *args, **kwargs)
        return linear(x, bias)

    return forward


def decide(model, forwards: int | None = None, max_bytes: int | None = None) -> dict:
    """What prepacked(model, forwards, max_bytes=...) would do, without doing it: {'layers', 'bytes', 'why'}
    ('layers' 0 and 'why' saying why when it would keep the plain layout). `forwards`: how many forward calls
    the block will make, when known: fewer than MIN_FORWARDS keep the plain layout. `max_bytes`: the most the
    copies may take (default: half of the memory available now)."""
    mods = candidates(model)
    need = sum(m.weight.numel() * m.weight.element_size() for m in mods)
    limit = int(available_bytes() * MEMORY_SHARE) if max_bytes is None else max_bytes
    why = ""
    if forwards is not None and forwards < MIN_FORWARDS:
        why = f"{forwards} forward(s) are too few to repay laying the weights out (< {MIN_FORWARDS})"
    elif not mods:
        why = "no plain fp32/bf16 linear layer on a CPU with oneDNN kernels for it"
    elif need > limit:
        why = f"the prepacked copy ({need / 2**20:.0f} MiB) would exceed {limit / 2**20:.0f} MiB"
    return {"layers": 0, "bytes": 0, "why": why} if why else {"layers": len(mods), "bytes": need, "why": ""}


@contextlib.contextmanager
def prepacked(model, forwards: int | None = None, rows_hint: int = ROWS_HINT,
              max_bytes: int | None = None) -> Iterator[dict]:
    """Run the block with every candidate linear layer's weight prepacked, as decide() decides; yields its
    answer. Every layer is restored on exit, also after an error."""
    info = decide(model, forwards, max_bytes)
    if info["why"]:
        log.debug("weights not prepacked: %s", info["why"])
        yield info
        return
    patched = []   # (module, its own forward attribute before, if it had one: accelerate's hooks set one)
    try:
        with torch.no_grad():
            for m in candidates(model):
                linear = packed_linear(m.weight, rows_hint)
                patched.append((m, m.__dict__.get("forward")))
                # An instance attribute shadows the class's forward; removing it restores the module exactly.
                m.forward = _forward(m, m.forward, linear)
        yield info
    finally:
        for m, before in patched:
            if before is None:
                del m.forward
            else:
                m.forward = before
