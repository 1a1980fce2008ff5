"""Quantization analysis: what int8 / NF4 / FP4 (with or without double quantization) cost in bytes
and in weight error, measured with bitsandbytes' own quantizers on a model's projection weights.

Schemes: "int8" (LLM.int8 storage: int8 weights + one fp32 scale per output row, what Linear8bitLt
keeps), "nf4" / "fp4" (4-bit codes, two per byte, fp32 absmax per block of 64), and "nf4-dq" /
"fp4-dq" (double quantization: the absmax values themselves quantized to 8 bit in blocks of 256).
Theory (QLoRA paper): 4-bit + 32/64 = 4.5 bits per parameter; double quant 4 + 8/64 + 32/(64*256)
= 4.127. Embeddings, norms (and an untied lm_head) stay unquantized, which is why a whole model's
bits per parameter sit well above these.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SCHEMES = ("int8", "nf4", "fp4", "nf4-dq", "fp4-dq")
BLOCK = 64
BLOCK2 = 256
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)   # what bitsandbytes' quantize_4bit accepts


def check_scheme(scheme: str) -> tuple[str, bool]:
    """'nf4-dq' -> ('nf4', True)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r}: expected one of {', '.join(SCHEMES)}")
    base, _, dq = scheme.partition("-")
    return base, dq == "dq"


def theoretical_bits(scheme: str, in_features: int | None = None) -> float:
    """Bits per weight by the formats' definitions (QLoRA paper for 4-bit)."""
    base, dq = check_scheme(scheme)
    if base == "int8":  # one fp32 scale per row of in_features weights
        return 8 + (32 / in_features if in_features else 0.0)
    return 4 + (8 / BLOCK + 32 / (BLOCK * BLOCK2) if dq else 32 / BLOCK)


@dataclass
class Quantized:
    scheme: str
    shape: tuple
    tensors: dict          # everything that must be stored: codes, scales, second-level constants
    state: object = None   # bitsandbytes QuantState for 4-bit

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / int(np.prod(self.shape))


def quantize(w: torch.Tensor, scheme: str, blocksize: int = BLOCK) -> Quantized:
    """Quantize a 2-D weight (out_features x in_features) exactly as bitsandbytes stores it.

    blocksize: weights per absmax for the 4-bit formats (bitsandbytes' Linear4bit uses 64; int8 ignores it)."""
    import bitsandbytes.functional as bnbf

    base, dq = check_scheme(scheme)
    if w.dim() != 2:
        raise ValueError(f"w: expected a 2-D weight, got shape {tuple(w.shape)}")
    if base == "int8":  # Int8Params quantizes from fp16, row-wise absmax
        cb, scb, _ = bnbf.int8_vectorwise_quant(w.detach().to(torch.float16))
        return Quantized(scheme, tuple(w.shape), {"CB": cb, "SCB": scb})
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize={blocksize!r}: expected one of {', '.join(map(str, BLOCKSIZES))}")
    packed, qs = bnbf.quantize_4bit(w.detach().float(), blocksize=blocksize, compress_statistics=dq, quant_type=base)
    tensors = {"weight": packed, "absmax": qs.absmax, "code": qs.code}
    if dq:
        tensors.update(absmax2=qs.state2.absmax, code2=qs.state2.code, offset=qs.offset.reshape(1))
    return Quantized(scheme, tuple(w.shape), tensors, qs)


def dequantize(q: Quantized) -> torch.Tensor:
    import bitsandbytes.functional as bnbf

    if q.scheme == "int8":
        return q.tensors["CB"].float() * (q.tensors["SCB"].float().unsqueeze(1) / 127.0)
    return bnbf.dequantize_4bit(q.tensors["weight"], q.state).float()


def weight_error(w: torch.Tensor, w_hat: torch.Tensor) -> dict:
    """Relative Frobenius error, cosine similarity and |error| quantiles in units of the weights' RMS."""
    w, w_hat = w.detach().float().flatten(), w_hat.detach().float().flatten()
    err = w_hat - w
    rms = w.pow(2).mean().sqrt().clamp_min(1e-12)
    a = (err.abs() / rms)
    sample = a[torch.randint(0, a.numel(), (50_000,), generator=torch.Generator().manual_seed(0))]
    q = torch.quantile(sample, torch.tensor([0.5, 0.99]))
    return {"rel_fro": float(err.norm() / w.norm().clamp_min(1e-12)),
            "cosine": float(torch.nn.functional.cosine_similarity(w, w_hat, dim=0)),
            "err_p50": float(q[0]), "err_p99": float(q[1]), "err_max": float(a.max())}


def projection_weights(model) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of every quantizable projection (nn.Linear inside the decoder layers; the
    lm_head stays unquantized, as bitsandbytes' transformers integration leaves it)."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in f".{name}" and "lm_head" not in name:
            out.append((name, mod.weight))
    if not out:
        raise ValueError("model: no nn.Linear projections found inside decoder layers (load it with precision='fp32')")
    return out


def layer_index(name: str) -> int:
    parts = name.split(".")
    return next((int(p) for p in parts if p.isdigit()), -1)


def layer_errors(model, schemes=SCHEMES, layers=None) -> "pd.DataFrame":
    """One row per (projection, scheme): bytes, bits/param and error. `layers`: indices to analyse
    (None = all)."""
    import pandas as pd

    rows = []
    for name, w in projection_weights(model):
        idx = layer_index(name)
        if layers is not None and idx not in layers:
            continue
        for s in schemes:
            q = quantize(w, s)
            rows.append(dict(name=name, layer=idx, module=name.split(".")[-1], scheme=s, params=w.numel(),
                             bytes=q.nbytes, bits_per_param=q.bits_per_param,
                             theory_bits=theoretical_bits(s, w.shape[1]), **weight_error(w, dequantize(q))))
    return pd.DataFrame(rows)


def error_sample(w: torch.Tensor, scheme: str, n: int = 20_000, seed: int = 0) -> np.ndarray:
    """A random sample of per-weight errors (w_hat - w) / rms(w), for distribution plots."""
    w = w.detach().float()
    err = (dequantize(quantize(w, scheme)) - w).flatten() / w.pow(2).mean().sqrt()
    idx = torch.randperm(err.numel(), generator=torch.Generator().manual_seed(seed))[:n]
    return err[idx].numpy()


def storage_table(model, schemes=("bf16",) + SCHEMES, unquantized_bytes: int = 2) -> "pd.DataFrame":
    """Whole-model storage per scheme: quantized projections + constants + unquantized rest.

    unquantized_bytes: bytes per element of embeddings / norms / lm_head (2 = bf16, as on a GPU).
    """
    import pandas as pd

    proj = projection_weights(model)
    n_proj = sum(w.numel() for _, w in proj)
    proj_ids = {id(w) for _, w in proj}
    seen, n_rest = set(), 0
    for p in list(model.parameters()) + list(model.buffers()):
        if id(p) not in proj_ids and p.data_ptr() not in seen and p.is_floating_point():
            seen.add(p.data_ptr())   # tied embeddings count once
            n_rest += p.numel()
    emb = model.get_input_embeddings().weight.numel()
    by_shape: dict = {}   # stored bytes depend only on the shape: quantize one real weight per shape
    for _, w in proj:
        by_shape.setdefault(tuple(w.shape), [w, 0])[1] += 1
    rows = []
    for s in schemes:
        if s == "bf16":
            qbytes, theory = 2 * n_proj, 16.0
        else:
            qbytes = sum(quantize(w, s).nbytes * n for w, n in by_shape.values())
            theory = sum(theoretical_bits(s, w.shape[1]) * w.numel() * n for w, n in by_shape.values()) / n_proj
        total = qbytes + n_rest * unquantized_bytes
        rows.append(dict(scheme=s, quantized_params=n_proj, unquantized_params=n_rest,
                         embedding_share=emb / (n_proj + n_rest), projection_bytes=qbytes,
                         unquantized_bytes=n_rest * unquantized_bytes, total_bytes=total,
                         proj_bits_per_param=8 * qbytes / n_proj, theory_bits_per_param=theory,
                         model_bits_per_param=8 * total / (n_proj + n_rest)))
    return pd.DataFrame(rows)


def loaded_bytes(model) -> int:
    """Bytes a loaded (possibly bitsandbytes-quantized) model holds: parameters, buffers and the
    4-bit quant states' tensors, each storage counted once."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.untyped_storage().nbytes()

    for t in list(model.parameters()) + list(model.buffers()):
        add(t)
        qs = getattr(t, "quant_state", None)
        if qs is not None:
            for v in (qs.absmax, qs.code, getattr(qs, "offset", None)):
                add(v)
            if getattr(qs, "state2", None) is not None:
                add(qs.state2.absmax)
                add(qs.state2.code)
        scb = getattr(t, "SCB", None)
        add(scb)
    return total
