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


def error_histogram(model, name: str, schemes=SCHEMES, seed: int = 0, bins: int = 120) -> "pd.DataFrame":
    """Density of error_sample over [-1, 1] rms for projection `name`, one column per scheme beside bin_center.
    Errors beyond one rms land in the edge bins (clipped), so the tails stay visible rather than dropped."""
    import pandas as pd

    w = dict(projection_weights(model))[name]
    edges = np.linspace(-1.0, 1.0, bins + 1)
    hist = pd.DataFrame({"bin_center": (edges[1:] + edges[:-1]) / 2})
    for s in schemes:
        hist[s], _ = np.histogram(np.clip(error_sample(w, s, seed=seed), -1, 1), bins=edges, density=True)
    return hist


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


# ------------------------------------------------------------------ the source's grid vs a continuous reference

SOURCE_BLOCK = 32   # GGUF Q4_0/Q4_1/Q8_0 blocks: 32 consecutive weights along the input dimension


def source_step(w: torch.Tensor, block: int = SOURCE_BLOCK) -> torch.Tensor:
    """Per-weight step of a Q4_1-style grid, recovered from dequantized values: each block of `block`
    weights along a row spans min..min + 15*d (llama.cpp maps a block's min to code 0 and its max to 15),
    so d = (max - min) / 15. Shape of w; rows whose length is not a multiple of `block` are an error."""
    w = w.detach().float()
    if w.dim() != 2 or w.shape[1] % block:
        raise ValueError(f"w: expected a 2-D weight with in_features a multiple of {block}, got {tuple(w.shape)}")
    b = w.reshape(w.shape[0], -1, block)
    d = (b.amax(-1, keepdim=True) - b.amin(-1, keepdim=True)) / 15
    return d.expand_as(b).reshape(w.shape)


def levels_per_block(w: torch.Tensor, block: int = SOURCE_BLOCK) -> float:
    """Mean number of distinct values in a block of `block` weights: at most 16 on a 4-bit grid, about
    `block` for continuous weights."""
    b = w.detach().float().reshape(-1, block)
    s = b.sort(-1).values
    return float(((s[:, 1:] != s[:, :-1]).sum(-1) + 1).float().mean())


def continuous_reference(w: torch.Tensor, seed: int = 0, block: int = SOURCE_BLOCK) -> torch.Tensor:
    """The dequantized weights dithered uniformly within their own Q4_1 step (w + U(-d/2, d/2)).

    Why this reference rather than a Gaussian with each tensor's mean and std: the original weights lay
    somewhere in exactly that interval around each grid value (Q4_1 rounds to the nearest level), so the
    dithered tensor keeps each block's scale, the tensor's heavy tails and its outliers - what absmax
    block quantizers are sensitive to - and only removes the 16-level grid."""
    g = torch.Generator().manual_seed(seed)
    w = w.detach().float()
    return w + (torch.rand(w.shape, generator=g) - 0.5) * source_step(w, block)


def source_vs_continuous(model, schemes=SCHEMES, layers=None, seed: int = 0) -> "pd.DataFrame":
    """One row per (projection, scheme): relative Frobenius error of the scheme on the model's weights
    as loaded ('source': for the embedded model, dequantized Q4_1) and on their continuous reference,
    with the levels per 32-block of each (16 or fewer: the source sits on a 4-bit grid)."""
    import pandas as pd

    rows = []
    for name, w in projection_weights(model):
        idx = layer_index(name)
        if layers is not None and idx not in layers:
            continue
        ref = continuous_reference(w, seed=seed)
        lv_src, lv_ref = levels_per_block(w), levels_per_block(ref)
        for s in schemes:
            e_src = weight_error(w, dequantize(quantize(w, s)))["rel_fro"]
            e_ref = weight_error(ref, dequantize(quantize(ref, s)))["rel_fro"]
            rows.append(dict(name=name, layer=idx, module=name.split(".")[-1], scheme=s, rel_fro_source=e_src,
                             rel_fro_continuous=e_ref, levels_source=lv_src, levels_continuous=lv_ref))
    return pd.DataFrame(rows)


def source_effect_summary(df: "pd.DataFrame") -> "pd.DataFrame":
    """Per scheme: mean relative error on the source and on the continuous reference, and their ratio."""
    g = df.groupby("scheme", sort=False)[["rel_fro_source", "rel_fro_continuous"]].mean()
    g["ratio"] = g["rel_fro_source"] / g["rel_fro_continuous"]
    return g.reset_index()


def source_effect_sentence(summary: "pd.DataFrame", levels_source: float) -> str:
    """One sentence from source_effect_summary: how far each scheme's error on the source weights is from
    its error on continuous weights, i.e. how much of the measured error is an artefact of the source."""
    parts = []
    for r in summary.itertuples():
        change = (r.ratio - 1) * 100
        parts.append(f"{r.scheme} {r.rel_fro_source:.4f} vs {r.rel_fro_continuous:.4f} ({change:+.1f} %)")
    grid = (f"the source weights take {levels_source:.1f} distinct values per block of {SOURCE_BLOCK} (a 4-bit grid)"
            if levels_source <= 16.5 else
            f"the source weights are not on a 4-bit grid ({levels_source:.1f} distinct values per block of {SOURCE_BLOCK})")
    worst = summary.loc[(summary["ratio"] - 1).abs().idxmax()]
    return (f"Relative error on the source weights vs on the continuous reference: {'; '.join(parts)}. "
            f"{grid[0].upper() + grid[1:]}; the largest source artefact is {worst.scheme}'s "
            f"({(worst.ratio - 1) * 100:+.1f} %), so errors measured on this model "
            + ("differ from those of a continuous-weight model by up to "
               f"{abs(worst.ratio - 1) * 100:.1f} %: part of each is an artefact of the source."
               if abs(worst.ratio - 1) >= 0.05 else
               "are within 5 % of those of a continuous-weight model: they are not an artefact of the source."))
