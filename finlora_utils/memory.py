"""Peak training-memory planner (pure arithmetic over a model config) and a measurement probe.

    python -m finlora_utils estimate --model llama-3.1-8b --bits 4 --rank 4 --seq-len 2048 --batch 4 --grad-checkpointing
    python -m finlora_utils estimate --model llama-3.1-8b --bits 8 --batch 4 --fit 24

The planner never imports torch, so it runs anywhere. What it counts, per device:
  quantized_weights   projection weights at 16 / 8 / 4 bits
  quant_constants     int8 row scales; 4-bit absmax per 64-block (0.5 bit/param) or double-quantized (0.127)
  unquantized         embeddings, untied lm_head, norms and biases in the base dtype
  lora / gradients / optimizer   trainable adapter weights (fp32), their grads, AdamW states (or 8-bit)
  activations         tensors autograd saves for backward (layer-by-layer accounting below) plus the
                      largest backward transient; gradient checkpointing keeps only layer inputs
  logits              the lm_head output, its fp32 log-softmax and its gradients (12 bytes per
                      position x vocab); with label_only_logits only label positions pay
  framework           CUDA context + cuBLAS workspace (invisible to torch.cuda.max_memory_allocated),
                      or on CPU the allocator/oneDNN scratch seen by VmHWM
The activation accounting follows what PyTorch/peft/bitsandbytes actually save (checked with
saved_tensors_hooks on SmolLM2): frozen projections save nothing (a 4-bit/16-bit base needs only its
weight for the input gradient), except bitsandbytes int8 which keeps its input; RMSNorm keeps an fp32
copy of its input; SiLU-gated MLP keeps gate, act and up; SDPA keeps q, k, v, output and logsumexp;
each LoRA module keeps its fp32 input (and a dropout mask: bool on CUDA, fp32 on CPU).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import (CPU_MEMORY_MODES, PARALLEL, PIPELINE_SPLITS, PRECISION, SCHEDULES, VARIANTS, ConfigError,
                     LoraSettings, paper_settings)
from . import arch as _arch
from .errors import cli_entry
from . import hardware, microbatch
from . import lora as _lora

GIB = 2 ** 30
BITS = (16, 8, 4)
DEVICES = ("cuda", "cpu")
OPTIMIZER_BYTES = {"adamw": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 0}
# bitsandbytes' 8-bit optimizers keep 32-bit state for a tensor of fewer elements (their min_8bit_size): a small
# model's LoRA tensors (the embedded model's 576 x 4) are all below it
BNB_MIN_8BIT_SIZE = 4096
BLOCK_4BIT = 64          # bitsandbytes 4-bit blocksize (absmax per 64 weights)
BLOCK_DQ = 256           # double quantization: absmax quantized to 8 bit in blocks of 256
CUDA_CONTEXT = 512 * 2 ** 20   # the CUDA context and kernels, outside torch's allocator (Ampere, torch 2.x)
# A process's first training on a GPU allocates, through torch's allocator, more than its tensors: 66 MiB
# (embedded 135M) and 98 MiB (SmolLM2-1.7B's shape) over the plan on an H200 (torch 2.11, 2026-12-04), the
# later trainings in that process within 2 %. cuBLAS and cuBLASLt keep a 32 MiB workspace per handle on Hopper,
# and autograd's backward runs on a thread of its own, with its own handle: three workspaces, likely (not
# separated by a profile). Measured on Hopper only: torch gives an older GPU ~8 MiB workspaces, so there the
# term is ~70 MiB high, kept because a plan that is a little high costs less than one that does not fit.
CUDA_FIRST_RUNTIME = 96 * 2 ** 20
CPU_FRAMEWORK = 20 * 2 ** 20   # python-side model objects, allocator arenas (bench: tiny model, static part)
# The one definition of "peak training memory" the kit stores, draws and predicts. The loaded process
# (python, torch, the model with its adapter, the tokenizer, the prepared data) is measured just before
# the first step; everything training adds on top of it is the training phase.
TRAINING_PHASE = ("gradients", "optimizer", "ddp_buckets", "activations", "logits", "runtime")
# CPU: what training adds besides tensors. Once per process: kernel code paged in, autograd's worker,
# MKL / oneDNN scratch (CPU_RUNTIME_FRESH). Then, for every micro-batch shape the process meets for the first
# time, the kernels built for it and kept for the life of the process (oneDNN's primitive cache and JIT'd
# code): ~9 MiB per new (rows, padded length) when the matmuls run in bf16, whatever the model and the
# threads, and next to nothing in fp32 (MKL keeps no per-shape kernels). Measured on the Xeon with AMX
# (2026-12-02, exact heap, batch 4, lengths 96, 88, ...; runtime = measured peak minus the planner's
# tensors): tiny model, bf16, first training of the process: 28.5 MiB with 1 shape, 76.1 with 6 (the same
# with 1 thread); int8 26.9 / 68.6; fp32 27.1 / 27.1; a second training in the process on the same shapes
# 0.4-1.3, on 1 / 6 new ones 11.1 / 61.8 (bf16). Embedded model, bf16: 422.5 / 453.6 / 497.8 MiB with
# 1 / 4 / 8 shapes. Real FPB batches (tiny model, 25 steps, 8 lengths from 48 to 112): ~8.8 MiB a shape.
# With ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 a shape still costs 4.4 MiB (and training runs at half speed).
CPU_RUNTIME_FRESH = {2: 19 * 2 ** 20, 4: 27 * 2 ** 20}     # by compute bytes: bf16, fp32
CPU_RUNTIME_WARM = 1 * 2 ** 20
CPU_SHAPE_BYTES = {2: 9 * 2 ** 20, 4: 0}
# A pipeline rank keeps more per new shape: 10.0 / 11.5 MiB (tiny model, stage 0 / 1) and 12.4 / 12.9 (embedded)
# in the resident set after each new micro-batch shape, 1 thread per rank, against 9.5-10.7 in a single process
# (Zen 4 EPYC, bf16 compute, 2026-12-02). Why is not known (not gloo: a send/recv of a new shape adds nothing;
# not the cached schedules); with 9 MiB the planner was under by 5.7 % (embedded) and 15.5 % (tiny) per rank.
CPU_PIPELINE_SHAPE_BYTES = {2: 12 * 2 ** 20, 4: 0}
# About half of a shape's kernels are the adapter's, shaped by its rank: the smoke study's nf4 r4 run, third in
# its process after r8 runs on the same lengths, measured ~21 MiB runtime for 4 such shapes (~5 MiB each).
CPU_ADAPTER_SHARE = 0.5
# Without a shape count (a plan made before any data exists): the constants the planner carried before it
# counted shapes, fitted on the smoke study's runs (a few shapes each): 52 MiB a first training, 18 after.
CPU_TRAIN_RUNTIME = 52 * 2 ** 20
CPU_TRAIN_RUNTIME_WARM = 18 * 2 ** 20
_TRAINED_SHAPES: set = set()   # the kernels this process has built: see unseen_shapes
# CPU DDP carries no term of its own: the ~33 MiB per rank once measured above the plan (notebook 04's DDP x2,
# 2026-12-01/02) went away when training began padding to tokenization.PAD_MULTIPLE (each rank pads its own
# shard, so it met even more distinct shapes than a single process): 261 / 257 MiB measured, 284 planned.
PEAK_DEFINITION = ("training phase: high-water mark during the training loop minus the live memory of the "
                   "loaded process (model + adapter built, data prepared) just before the first step")
PROCESS_PEAK_DEFINITION = "whole process: high-water mark from process start to the end of the training loop"


@dataclass
class Plan:
    """Predicted peak memory. `breakdown`/`total_bytes` are for the most loaded device."""
    model: str
    bits: int
    rank: int
    targets: tuple
    seq_len: int
    batch: int
    grad_checkpointing: bool
    label_only_logits: bool
    gpus: int
    parallel: str
    device: str
    breakdown: dict
    total_bytes: int
    per_device: list = field(default_factory=list)
    summed_bytes: int = 0
    trainable_params: int = 0
    layers_per_device: list = field(default_factory=list)

    @property
    def training_bytes(self) -> int:
        """What training adds above the loaded model on the most loaded device (TRAINING_PHASE): what
        train_info.peak_mem_bytes measures."""
        return max(d["training_bytes"] for d in self.per_device) if self.per_device else \
            training_bytes(self.breakdown)

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def total_gb(self) -> float:
        return self.total_bytes / 1e9

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(total_gib=round(self.total_gib, 4), total_gb=round(self.total_gb, 4),
                 summed_gib=round(self.summed_bytes / GIB, 4), training_bytes=self.training_bytes)
        return d

    def table(self) -> str:
        w = max(len(k) for k in self.breakdown)
        # DDP's batch is each rank's; train's batch_size is the global one (every rank takes a share)
        per_rank = f" per rank (global {self.batch * self.gpus})" if self.parallel == "ddp" and self.gpus > 1 else ""
        lines = [f"{self.model}  {self.bits}-bit r{self.rank} {','.join(self.targets)}  seq {self.seq_len} x batch "
                 f"{self.batch}{per_rank}  ckpt={'on' if self.grad_checkpointing else 'off'}  "
                 f"{self.parallel if self.gpus > 1 else 'single'} x{self.gpus} ({self.device})"]
        lines += [f"  {k:<{w}}  {v / GIB:9.3f} GiB" for k, v in self.breakdown.items()]
        lines.append(f"  {'total per device':<{w}}  {self.total_gib:9.3f} GiB  ({self.total_gb:.2f} GB)")
        if self.gpus > 1:
            per = ", ".join(f"{d['total_bytes'] / GIB:.2f}" for d in self.per_device)
            lines.append(f"  per device GiB: {per}   summed {self.summed_bytes / GIB:.2f} GiB")
        return "\n".join(lines)


def training_bytes(breakdown: dict) -> int:
    """The training-phase part of a planner breakdown (see TRAINING_PHASE)."""
    return sum(v for k, v in breakdown.items() if k in TRAINING_PHASE)


# ------------------------------------------------------------------ building blocks

def dtype_bytes(bits: int, device: str, compute_bytes: int | None = None, base_bytes: int | None = None,
                autocast: bool = True) -> dict:
    """Bytes per element of each kind of tensor, as the kit trains (finlora_utils.train):
    act    matmul outputs (q, k, v, MLP): the autocast / compute dtype, bf16 where the hardware has it
    resid  unquantized weights and the residual stream: fp32 for int8 on CPU (load_model), else act
    lora   what each LoRA module saves of its input: peft casts it to the fp32 adapter dtype, autocast
           then keeps a copy in the compute dtype
    mask   dropout mask: bool on CUDA; on CPU dropout multiplies by a noise tensor of the input dtype
    head   the lm_head weight's copy autocast makes when the unquantized weights are wider than the compute
           dtype (int8 on a bf16 CPU keeps them fp32): saved for the input gradient, so it lives from the
           head's forward to its backward, beside the logits
    """
    native = device == "cuda" or hardware.cpu_bf16_native()
    # a 16-bit (bf16) model computes in bf16 whether or not the CPU has bf16 instructions; a quantized
    # one in bitsandbytes' compute dtype, which the kit sets to bf16 only where it is native
    act = compute_bytes or (2 if bits == 16 or native else 4)
    resid = base_bytes or (4 if (bits == 8 and device == "cpu") else act)
    autocast = autocast and native   # train.amp_dtype: autocast only where bf16 is native
    return {"act": act, "resid": resid, "lora": act if autocast else 4, "mask": 1 if device == "cuda" else 4,
            "head": act if autocast and resid != act else 0}


def weight_bytes(cfg: dict, bits: int, base_bytes: int = 2, double_quant: bool = False,
                 layers: int | None = None, embeddings: bool = True, head: bool = True) -> dict:
    """Base-model weights: quantized projections, their constants, everything left unquantized.

    From the real module tree (arch.facts): bitsandbytes quantizes every Linear/Conv1D in the decoder
    layers; expert stacks (3-D parameters), routers, norms, biases, embeddings and the LM head stay in
    the base dtype. `layers` < all: a pipeline stage, charged its share of the layers."""
    f = _arch.facts(cfg)
    L = f["n_layers"]
    share = (lambda n: n) if layers is None else (lambda n: n * layers / L)
    quantizable = [m for m in f["modules"] if m["kind"] != "experts"]
    n_lin = share(sum(m["in"] * m["out"] * m["count"] for m in quantizable))
    if bits == 16:
        quant, consts = n_lin * base_bytes, 0
    elif bits == 8:  # int8 weight + one fp32 scale per output row (LLM.int8 row-wise SCB)
        quant, consts = n_lin, 4 * share(sum(m["out"] * m["count"] for m in quantizable))
    else:  # 4-bit: two weights a byte; absmax fp32 per block, or 8-bit absmax + fp32 per 256 blocks
        quant = share(sum((m["in"] * m["out"] + 1) // 2 * m["count"] for m in quantizable))
        blocks = [(-(-m["in"] * m["out"] // BLOCK_4BIT), m["count"]) for m in quantizable]
        if double_quant:
            consts = share(sum((b + 4 * -(-b // BLOCK_DQ)) * c for b, c in blocks))
        else:
            consts = share(sum(4 * b * c for b, c in blocks))
    p = f["params"]
    n_unq = share(p["layers_other"] + sum((m["in"] * m["out"] * m["experts"] if m["kind"] == "experts" else 0)
                                          + (m["out"] if m["bias"] else 0) for m in f["modules"] for _ in range(m["count"])))
    if embeddings:
        n_unq += p["embeddings"]
    if head:
        n_unq += p["final"] + p["head"]
        if f["tied"] and not embeddings:   # a last pipeline stage needs its own copy of a tied head
            n_unq += cfg["vocab_size"] * _lora.hidden_size(cfg)
    return {"quantized_weights": int(quant), "quant_constants": int(consts), "unquantized": int(n_unq * base_bytes)}


def int8_input_bytes(cfg: dict, tokens: int, dt: dict) -> int:
    """What bitsandbytes' int8 matmuls keep per layer: each distinct projection input, stored on
    ctx (not save_for_backward), so non-reentrant checkpointing cannot drop it either."""
    shapes = _lora.linear_shapes(cfg)
    h = _lora.hidden_size(cfg)
    if _lora.family(cfg) == "gpt2":
        return tokens * (2 * h * dt["resid"] + (h + shapes["c_fc"][1]) * dt["act"])
    # q/k/v and gate/up read a norm output (residual dtype); o and down read matmul outputs
    return tokens * (2 * h * dt["resid"] + (shapes["q_proj"][1] + shapes["gate_proj"][1]) * dt["act"])


def layer_activation_bytes(cfg: dict, settings: LoraSettings, bits: int, tokens: int, dt: dict) -> int:
    """Bytes autograd saves for backward in ONE decoder layer for `tokens` positions (b x s)."""
    shapes = _lora.linear_shapes(cfg)
    h = _lora.hidden_size(cfg)
    e = dt["act"]
    targets = _lora.canonical_targets(cfg, settings.targets)
    if _lora.family(cfg) == "gpt2":
        inner = shapes["c_fc"][1]
        heads = cfg["n_head"]
        core = 2 * h * (e + 4) + 4 * h * e + heads * 4 + 2 * inner * e   # 2 LayerNorms, qkv+out, GELU in/out
        inputs = {"c_attn": h, "attn.c_proj": h, "c_fc": h, "mlp.c_proj": inner}
    else:
        heads = cfg["num_attention_heads"]
        q, kv, i = shapes["q_proj"][1], shapes["k_proj"][1], shapes["gate_proj"][1]
        core = 2 * h * 4 + (2 * q + 2 * kv) * e + heads * 4 + 3 * i * e  # norms(fp32), q k v out lse, gate act up
        inputs = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": q, "gate_proj": h, "up_proj": h, "down_proj": i}
    # LoRA: each module keeps its (cast) input for lora_A's grad, a dropout mask, and lora_A's output.
    shared = settings.dropout == 0 and dt["lora"] == dt["act"]   # same tensor feeds several modules
    seen_in: set = set()
    adapters = 0
    for t in targets:
        fin = inputs[t]
        if not (shared and fin in seen_in):
            adapters += fin * dt["lora"] + (fin * dt["mask"] if settings.dropout > 0 else 0)
        seen_in.add(fin)
        adapters += settings.rank * dt["lora"]   # lora_A output, saved for lora_B
        if settings.variant == "dora":   # DoRA also keeps the layer output to rescale
            adapters += shapes[t][1] * 4
    return tokens * (core + adapters) + (int8_input_bytes(cfg, tokens, dt) if bits == 8 else 0)


def math_attention_bytes(cfg: dict, tokens: int, seq_len: int, dt: dict) -> int:
    """Extra per layer when attention runs as plain matmuls (the kit does so on CPU up to 128 tokens):
    the softmax output (fp32 under autocast, plus its bf16 copy for the matmul with v) and k/v
    repeated to every head."""
    if _lora.family(cfg) == "gpt2":
        heads, extra_kv = cfg["n_head"], 0
    else:
        shapes = _lora.linear_shapes(cfg)
        heads, extra_kv = cfg["num_attention_heads"], 2 * (shapes["q_proj"][1] - shapes["k_proj"][1])
    per_score = 4 + (dt["act"] if dt["act"] != 4 else 0)
    return tokens * (heads * seq_len * per_score + extra_kv * dt["act"])


def kv_width(cfg: dict) -> int:
    """Width of one token's keys (= its values) in one layer."""
    if _lora.family(cfg) == "gpt2":
        return _lora.hidden_size(cfg)
    return _lora.linear_shapes(cfg)["k_proj"][1]


def backward_transient_bytes(cfg: dict, tokens: int, dt: dict) -> int:
    """Largest short-lived set of gradient tensors while one layer runs backward (MLP grads + residual)."""
    shapes = _lora.linear_shapes(cfg)
    i = shapes.get("gate_proj", shapes.get("c_fc"))[1]
    h = _lora.hidden_size(cfg)
    return tokens * (3 * i * dt["act"] + 2 * h * 4)


def logits_bytes(cfg: dict, positions: int) -> int:
    """fp32 log-softmax output (saved) + its incoming grad + the grad of the logits."""
    return positions * cfg["vocab_size"] * 12


# ------------------------------------------------------------------ the planner

def pipeline_split(n_layers: int, n_stages: int, first_extra: float = 0.0, last_extra: float = 0.0,
                   layer_costs: list[float] | None = None) -> list[int]:
    """Contiguous layers per stage that minimise the most loaded stage.

    Costs are in layer units: `first_extra` is what the first stage carries besides its layers
    (embeddings), `last_extra` the last one (final norm, lm_head, logits). `layer_costs[s]`: what one
    layer costs on stage s (default 1): under 1F1B stage s keeps min(m, p - s) micro-batches' activations
    in flight, so an early stage's layer costs more than a late one's. With no extras the remainder
    layers go to the middle stages, which do no embedding/head work.
    """
    if not isinstance(n_stages, int) or n_stages < 1:
        raise ConfigError(f"n_stages={n_stages!r}: expected an integer >= 1")
    if not isinstance(n_layers, int) or n_layers < n_stages:
        raise ConfigError(f"n_layers={n_layers!r}: expected an integer >= n_stages ({n_stages})")
    if n_stages == 1:
        return [n_layers]
    extra = [first_extra] + [0.0] * (n_stages - 2) + [last_extra]
    unit = list(layer_costs) if layer_costs is not None else [1.0] * n_stages
    if len(unit) != n_stages or min(unit) <= 0:
        raise ConfigError(f"layer_costs={layer_costs!r}: expected {n_stages} positive numbers, one per stage")
    # DP over contiguous splits, minimising (most loaded stage, sum of squared loads, layers on the
    # two end stages): ties go to the middle stages, which do no embedding / head work.
    from functools import lru_cache

    last = n_stages - 1

    @lru_cache(maxsize=None)
    def best(s: int, n: int):
        if s == last:
            c = n * unit[s] + extra[s]
            return (c, c * c, n), (n,)
        top = None
        for k in range(1, n - (last - s) + 1):
            c = k * unit[s] + extra[s]
            (mx, sq, ends), rest = best(s + 1, n - k)
            cand = ((max(mx, c), sq + c * c, ends + (k if s == 0 else 0)), (k,) + rest)
            if top is None or cand[0] < top[0]:
                top = cand
        return top

    return list(best(0, n_layers)[1])


def optimizer_state_bytes(shapes, optimizer: str) -> int:
    """The optimizer's state for tensors of these shapes: AdamW's two fp32 moments, 8-bit AdamW's two uint8 ones
    except for tensors below BNB_MIN_8BIT_SIZE, which bitsandbytes keeps in fp32."""
    per = OPTIMIZER_BYTES[optimizer]
    sizes = [math.prod(s) for s in shapes]
    if not optimizer.endswith("_8bit"):
        return sum(sizes) * per
    return sum(n * (OPTIMIZER_BYTES["adamw"] if n < BNB_MIN_8BIT_SIZE else per) for n in sizes)


def _validate(bits, rank, seq_len, batch, gpus, parallel, optimizer, device, micro_batches, schedule):
    def check(ok, param, value, expected):
        if not ok:
            raise ConfigError(f"{param}={value!r}: expected {expected}")
    check(bits in BITS, "bits", bits, "one of 16, 8, 4")
    check(isinstance(rank, int) and rank > 0, "rank", rank, "an integer > 0")
    check(isinstance(seq_len, int) and seq_len >= 1, "seq_len", seq_len, "an integer >= 1")
    check(isinstance(batch, int) and batch >= 1, "batch", batch, "an integer >= 1")
    check(isinstance(gpus, int) and gpus >= 1, "gpus", gpus, "an integer >= 1")
    check(parallel in PARALLEL, "parallel", parallel, f"one of {', '.join(PARALLEL)}")
    check(optimizer in OPTIMIZER_BYTES, "optimizer", optimizer, f"one of {', '.join(OPTIMIZER_BYTES)}")
    check(device in DEVICES, "device", device, f"one of {', '.join(DEVICES)}")
    check(isinstance(micro_batches, int) and 1 <= micro_batches <= batch, "micro_batches", micro_batches,
          f"an integer in [1, batch={batch}]")
    check(schedule in SCHEDULES, "schedule", schedule, " or ".join(SCHEDULES))


def plan(model="llama-3.1-8b", bits: int = 4, rank: int | None = None, targets=("q_proj", "k_proj", "v_proj"),
         seq_len: int = 512, batch: int = 1, grad_checkpointing: bool = False, label_only_logits: bool = False,
         label_tokens: int = 16, gpus: int = 1, parallel: str = "none", optimizer: str = "adamw",
         variant: str = "lora", dropout: float = 0.05, double_quant: bool = False, zero1: bool = False,
         micro_batches: int = 1, schedule: str = "gpipe", device: str = "cuda",
         compute_bytes: int | None = None, base_bytes: int | None = None, autocast: bool = True,
         reentrant: bool = False, math_attention: bool = False,
         overhead_bytes: int | None = None, warm_process: bool = False, runtime_bytes: int | None = None,
         new_shapes: float | None = None, balance: str = "memory", shared_prefix: int = 0) -> Plan:
    """Predict peak training memory. `batch` is per device (per pipeline for parallel='pipeline',
    split into `micro_batches`); `seq_len` is the padded length. rank=None uses the paper's
    (8 for 16/8-bit, 4 for 4-bit).

    Execution details that change the answer: `reentrant` checkpointing (HF's old default) also drops
    int8 inputs; `math_attention` adds the seq x seq scores of plain-matmul attention (the kit uses it
    on CPU up to train.SHORT_ATTENTION tokens; fused SDPA kernels never store them); `base_bytes=4`
    models fp32 unquantized weights (peft's prepare_model_for_kbit_training); `autocast=False` keeps
    LoRA inputs in fp32; `warm_process`: this process has trained before on this device, so the CPU
    runtime's one-off caches or a GPU's BLAS workspaces (breakdown 'runtime') are resident already;
    `new_shapes`: how many micro-batch shapes the run meets that this process has not trained on (CPU: each
    costs CPU_SHAPE_BYTES of kernels; None: a typical run, the older constants); `runtime_bytes` overrides
    that term. `balance` (pipeline):
    'memory' splits the layers so the most loaded stage is as light as it can be, 'even' gives every stage
    the same number of layers (TrainConfig.pipeline_split). `shared_prefix`: each micro-batch's (a
    pipeline chunk's) examples share that many prompt tokens, laid out once (shared_prefix.pack): the layers
    see batch x (seq_len - shared_prefix) + shared_prefix rows, and attention keeps per-example copies of k and v.
    """
    if rank is None:
        rank = 4 if bits == 4 else 8
    _validate(bits, rank, seq_len, batch, gpus, parallel, optimizer, device, micro_batches, schedule)
    if balance not in PIPELINE_SPLITS:
        raise ConfigError(f"balance={balance!r}: expected one of {', '.join(PIPELINE_SPLITS)}")
    if gpus == 1:
        parallel = "none"
    elif parallel == "none":
        raise ConfigError(f"parallel='none' with gpus={gpus}: expected ddp or pipeline")
    cfg = _lora.model_config(model)
    settings = LoraSettings(rank=rank, targets=targets, variant=variant, dropout=dropout)
    dt = dtype_bytes(bits, device, compute_bytes, base_bytes, autocast)
    base = dt["resid"]
    framework = overhead_bytes if overhead_bytes is not None else (CUDA_CONTEXT if device == "cuda" else CPU_FRAMEWORK)
    if runtime_bytes is not None:
        runtime = runtime_bytes
    elif device == "cuda":
        runtime = 0 if warm_process else CUDA_FIRST_RUNTIME
    elif new_shapes is None:
        runtime = CPU_TRAIN_RUNTIME_WARM if warm_process else CPU_TRAIN_RUNTIME
    else:
        wide = 4 if dt["act"] == 4 else 2
        per_shape = (CPU_PIPELINE_SHAPE_BYTES if parallel == "pipeline" else CPU_SHAPE_BYTES)[wide]
        runtime = (CPU_RUNTIME_WARM if warm_process else CPU_RUNTIME_FRESH[wide]) + int(per_shape * new_shapes)
    L = _lora.n_layers(cfg)
    trainable = _lora.trainable_params(cfg, settings)
    per_layer_trainable = trainable // L
    per_layer_optimizer = optimizer_state_bytes(_lora.adapter_shapes(cfg, settings).values(), optimizer) / L

    if not 0 <= shared_prefix < seq_len:
        raise ConfigError(f"shared_prefix={shared_prefix!r}: expected 0 <= shared_prefix < seq_len ({seq_len})")

    def logit_positions(seqs: int) -> int:
        return min(label_tokens, seq_len) * seqs if label_only_logits else seqs * seq_len

    def device_plan(layers: int, first: bool, last: bool, seqs: int, in_flight: int) -> dict:
        tokens = seqs * seq_len - (seqs - 1) * shared_prefix   # rows every projection sees
        w = weight_bytes(cfg, bits, base, double_quant, layers, embeddings=first, head=last)
        n_train = per_layer_trainable * layers
        shards = gpus if (zero1 and parallel == "ddp") else 1
        h = _lora.hidden_size(cfg)
        per_layer = layer_activation_bytes(cfg, settings, bits, tokens, dt)
        if math_attention:
            per_layer += math_attention_bytes(cfg, tokens, seq_len, dt)
        if shared_prefix:   # each example's keys and values: the prefix's copied beside its own
            per_layer += seqs * seq_len * 2 * kv_width(cfg) * dt["act"]
        if grad_checkpointing:   # keep only each layer's input; one layer is recomputed at a time
            saved = layers * tokens * h * dt["resid"] * in_flight
            if bits == 8 and not reentrant:   # reentrant checkpointing runs the forward under no_grad
                saved += layers * int8_input_bytes(cfg, tokens, dt) * in_flight
            live = per_layer + backward_transient_bytes(cfg, tokens, dt)
        else:
            saved = layers * per_layer * in_flight
            live = backward_transient_bytes(cfg, tokens, dt)
        logits = 0
        if last:  # the logits' backward runs before any layer's, so the two transients never overlap
            logits = (logits_bytes(cfg, logit_positions(seqs)) + tokens * h * 4   # + final norm's fp32 input
                      + cfg["vocab_size"] * h * dt["head"])
        b = dict(w)
        b["lora"] = n_train * 4                  # peft keeps adapters in fp32 (autocast_adapter_dtype)
        b["gradients"] = n_train * 4
        b["optimizer"] = math.ceil(per_layer_optimizer * layers / shards)
        if parallel == "ddp":
            b["ddp_buckets"] = n_train * 4       # DDP's flat gradient buckets
        b["activations"] = saved + live
        b["logits"] = max(0, logits - live)      # only what the logits add above the layer transient
        b["framework"] = framework
        b["runtime"] = runtime
        return b

    if parallel == "pipeline":
        mb_seqs = -(-batch // micro_batches)   # the largest micro-batch
        mb_tokens = mb_seqs * seq_len - (mb_seqs - 1) * shared_prefix
        unit = layer_activation_bytes(cfg, settings, bits, mb_tokens, dt) or 1
        wb = weight_bytes(cfg, bits, base, double_quant, 1, embeddings=False, head=False)
        layer_cost = sum(wb.values()) + unit
        emb = cfg["vocab_size"] * _lora.hidden_size(cfg) * base
        in_flight = [micro_batches if schedule == "gpipe" else min(micro_batches, gpus - s) for s in range(gpus)]
        split = pipeline_split(L, gpus) if balance == "even" else pipeline_split(
            L, gpus, first_extra=emb / layer_cost,
            last_extra=(emb + logits_bytes(cfg, logit_positions(mb_seqs))) / layer_cost,
            layer_costs=[(sum(wb.values()) + unit * f) / layer_cost for f in in_flight])
        per = [device_plan(n, s == 0, s == gpus - 1, mb_seqs, in_flight[s]) for s, n in enumerate(split)]
    else:
        split = [L] * gpus
        per = [device_plan(L, True, True, batch, 1) for _ in range(gpus)]
    per_device = [{"device": i, "layers": split[i], "breakdown": b, "total_bytes": sum(b.values()),
                   "training_bytes": training_bytes(b)} for i, b in enumerate(per)]
    worst = max(per_device, key=lambda d: d["total_bytes"])
    return Plan(model=str(model), bits=bits, rank=rank, targets=tuple(settings.targets), seq_len=seq_len,
                batch=batch, grad_checkpointing=grad_checkpointing, label_only_logits=label_only_logits,
                gpus=gpus, parallel=parallel, device=device, breakdown=worst["breakdown"],
                total_bytes=worst["total_bytes"], per_device=per_device,
                summed_bytes=sum(d["total_bytes"] for d in per_device), trainable_params=trainable,
                layers_per_device=split)


def run_plan(config: dict, shape: dict, model=None) -> Plan:
    """The planner for one training run: `config` as stored (run_info.config / TrainConfig.to_dict()),
    `shape` its largest batch as train_info.memory_plan records it (seq_len, batch per rank or per
    pipeline, label_tokens, grad_checkpointing, math_attention, device, gpus). `model`: a config the
    planner can read instead of config['model'] (train passes the live model's)."""
    lo = config.get("lora") or {}
    precision = config.get("precision")
    prec = PRECISION.get(precision, PRECISION["bf16"])   # a config without one: the unquantized default
    bits, kw = prec.planner_bits, prec.planner_kwargs
    gpus = int(shape.get("gpus", 1))
    parallel = config.get("parallel", "none") if gpus > 1 else "none"
    return plan(config.get("model") if model is None else model, bits=bits, rank=lo.get("rank"),
                targets=tuple(lo.get("targets") or ("q_proj", "k_proj", "v_proj")),
                variant=lo.get("variant", "lora"), dropout=lo.get("dropout", 0.05), seq_len=int(shape["seq_len"]),
                batch=int(shape["batch"]), grad_checkpointing=bool(shape.get("grad_checkpointing")),
                label_only_logits=bool(config.get("label_only_logits", True)),
                label_tokens=int(shape.get("label_tokens", 16)), optimizer=config.get("optimizer", "adamw"),
                double_quant=bool(config.get("double_quant")), device=shape.get("device", "cpu"),
                math_attention=bool(shape.get("math_attention")), gpus=gpus, parallel=parallel,
                micro_batches=_micro_batches(config, int(shape["batch"]), gpus, shape.get("device", "cpu"))
                if parallel == "pipeline" else 1,
                schedule=config.get("schedule", "gpipe") if parallel == "pipeline" else "gpipe",
                warm_process=bool(shape.get("warm_process")),
                new_shapes=None if shape.get("new_shapes") is None else float(shape["new_shapes"]),
                balance=config.get("pipeline_split", "memory") if parallel == "pipeline" else "memory",
                shared_prefix=int(shape.get("shared_prefix", 0)), **kw)


def _micro_batches(config: dict, batch: int, gpus: int, device: str) -> int:
    """The config's pipeline micro-batch count; 0 (the kit chooses) as finlora_utils.microbatch chooses it."""
    m = int(config.get("micro_batches", 1))
    if m:
        return m
    return microbatch.count_for(batch, gpus, config.get("schedule", "gpipe"), device, config.get("precision"))


def _largest(fn, lo: int, hi: int) -> int:
    """Largest x in [lo, hi] with fn(x) true (fn monotone); 0 when even lo fails."""
    if not fn(lo):
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fn(mid) else (lo, mid - 1)
    return lo


def max_seq_len_that_fits(gpu_gib: float, model="llama-3.1-8b", **kw) -> int:
    """Longest padded sequence length whose predicted peak fits in gpu_gib (0 if none does)."""
    if not gpu_gib > 0:
        raise ConfigError(f"gpu_gib={gpu_gib!r}: expected > 0")
    cap = int(_lora.model_config(model).get("max_position_embeddings") or 131072)
    kw.pop("seq_len", None)
    return _largest(lambda s: plan(model, seq_len=s, **kw).total_bytes <= gpu_gib * GIB, 16, cap)


def max_batch_that_fits(gpu_gib: float, model="llama-3.1-8b", **kw) -> int:
    """Largest batch whose predicted peak fits in gpu_gib (0 if none does); with micro_batches, a multiple of
    it, since a pipeline splits its batch evenly (training refuses any other)."""
    if not gpu_gib > 0:
        raise ConfigError(f"gpu_gib={gpu_gib!r}: expected > 0")
    kw.pop("batch", None)
    if kw.get("parallel") != "pipeline":   # only a pipeline splits its batch
        kw["micro_batches"] = 1
    m = kw.get("micro_batches", 1)
    if not (isinstance(m, int) and m >= 1):
        raise ConfigError(f"micro_batches={m!r}: expected an integer >= 1")
    return m * _largest(lambda k: plan(model, batch=k * m, **kw).total_bytes <= gpu_gib * GIB, 1, max(1, 4096 // m))


# ------------------------------------------------------------------ the paper's numbers

# FinLoRA (2025 version), GPU memory for finetuning Llama-3.1-8B on NER: 4x RTX A5000, DeepSpeed
# ZeRO-1, gradient checkpointing, r8 on q/k/v. GB as printed; the paper does not say GB or GiB.
PAPER_MEMORY = [dict(bits=16, batch=4, paper_gb=30.91), dict(bits=16, batch=8, paper_gb=30.91),
                dict(bits=8, batch=4, paper_gb=11.41), dict(bits=8, batch=8, paper_gb=11.81),
                dict(bits=4, batch=4, paper_gb=8.26), dict(bits=4, batch=8, paper_gb=8.65)]
# Padded length of a batch (mean over random batches of the longest example) of the kit's NER train
# split, tokenized with the SmolLM2 tokenizer (Llama-3's larger vocabulary gives ~10-15 % fewer).
NER_PADDED_LEN = {4: 151, 8: 186}
PAPER_SCENARIOS = {
    # what the paper documents, with the tools' defaults (HF/axolotl: bf16 base, full logits,
    # reentrant checkpointing, double quantization for 4-bit) and GB = 1e9 bytes
    "documented": dict(base_bytes=None, label_only_logits=False, unit=1e9),
    # a reading that fits all six: unquantized weights in fp32 (peft's prepare_model_for_kbit_training
    # upcasts them; a 16-bit run loaded without torch_dtype is fp32), the logits peak not captured,
    # "GB" meaning GiB
    "fp32 base, GiB": dict(base_bytes=4, label_only_logits=True, unit=GIB),
}


def paper_comparison(scenario: str = "documented") -> list[dict]:
    """Planner vs FinLoRA's reported GPU memory, one row per (bits, batch)."""
    if scenario not in PAPER_SCENARIOS:
        raise ConfigError(f"scenario={scenario!r}: expected one of {', '.join(PAPER_SCENARIOS)}")
    sc = PAPER_SCENARIOS[scenario]
    rows = []
    for r in PAPER_MEMORY:
        p = plan("llama-3.1-8b", bits=r["bits"], rank=8, seq_len=NER_PADDED_LEN[r["batch"]], batch=r["batch"],
                 grad_checkpointing=True, reentrant=True, gpus=4, parallel="ddp", zero1=True,
                 double_quant=r["bits"] == 4, label_only_logits=sc["label_only_logits"], base_bytes=sc["base_bytes"])
        pred = p.total_bytes / sc["unit"]
        rows.append(dict(r, scenario=scenario, seq_len=p.seq_len, predicted=round(pred, 2),
                         error_pct=round(100 * (pred - r["paper_gb"]) / r["paper_gb"], 1)))
    return rows


# ------------------------------------------------------------------ planner tables (frames for notebook 02)

# FinLoRA's three configurations as (label, bits, rank), from config.paper_settings so the ranks live in one place
PAPER_CONFIGS = tuple((f"{b}-bit r{paper_settings(b)[1].rank}", b, paper_settings(b)[1].rank) for b in (16, 8, 4))


def breakdown_table(model="llama-3.1-8b", configs=PAPER_CONFIGS, targets=("q_proj", "k_proj", "v_proj"),
                    seq_len: int = 2048, batch: int = 4) -> "pd.DataFrame":
    """Per configuration, without and with gradient checkpointing (' ckpt'): each planner component in GiB
    and total_GiB, for one GPU. 0 where a component does not apply (a 16-bit model has no quant_constants)."""
    import pandas as pd

    rows = []
    for name, bits, rank in configs:
        for ckpt in (False, True):
            p = plan(model, bits=bits, rank=rank, targets=targets, seq_len=seq_len, batch=batch,
                     grad_checkpointing=ckpt, double_quant=bits == 4)
            rows.append(dict(config=f"{name}{' ckpt' if ckpt else ''}", **{k: v / GIB for k, v in p.breakdown.items()},
                             total_GiB=p.total_gib))
    return pd.DataFrame(rows).fillna(0)


def fits_table(gpu_sizes, model="llama-3.1-8b", configs=PAPER_CONFIGS, batch: int = 4) -> "pd.DataFrame":
    """The longest padded sequence that fits at `batch` on one GPU of each size (column '<size> GiB'; 0: the
    weights alone do not fit), per configuration with the two memory savers switched on one after the other."""
    import pandas as pd

    rows = []
    for name, bits, rank in configs:
        for ckpt, lo in ((False, False), (True, False), (True, True)):
            kw = dict(bits=bits, rank=rank, batch=batch, grad_checkpointing=ckpt, label_only_logits=lo,
                      double_quant=bits == 4)
            rows.append(dict(config=name, ckpt=ckpt, label_only_logits=lo,
                             **{f"{g:g} GiB": max_seq_len_that_fits(g, model, **kw) for g in gpu_sizes}))
    return pd.DataFrame(rows)


def paper_comparison_table() -> "pd.DataFrame":
    """paper_comparison for every PAPER_SCENARIOS entry, in their order, as one frame."""
    import pandas as pd

    return pd.DataFrame([r for sc in PAPER_SCENARIOS for r in paper_comparison(sc)])


# ------------------------------------------------------------------ measurement

def vm_hwm() -> int:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) * 1024


def available_bytes() -> int:
    """Memory the OS can give this machine's processes now (MemAvailable); 0 where /proc/meminfo is unreadable."""
    try:
        m = re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    except OSError:
        return 0
    return int(m.group(1)) * 1024 if m else 0


def _vm_rss() -> int:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) * 1024


def current_bytes() -> int:
    """Memory in use now: CUDA allocated bytes, else the process RSS (for a baseline to subtract)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.memory_allocated()
    return _vm_rss()


def release_free_heap() -> None:
    """Give glibc's freed-but-kept heap pages back to the OS (malloc_trim). Without this a freed 50 MB
    buffer stays resident, a new allocation reuses it without raising RSS, and a peak is missed."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def baseline_bytes() -> int:
    """current_bytes() after a heap trim: the live memory a measure_peak result should be compared with."""
    release_free_heap()
    return current_bytes()


def measure_peak(fn, *args, **kwargs):
    """Run fn(*args, **kwargs) and return (result, peak_bytes, method).

    CUDA: torch.cuda.max_memory_allocated after a reset ("cuda_max_allocated"; excludes the CUDA
    context). CPU: trim the heap (malloc_trim), reset the kernel's RSS high-water mark
    (/proc/self/clear_refs "5") and read VmHWM ("vmhwm"); the number includes the process baseline
    (python + torch + anything loaded before), so subtract baseline_bytes() taken just before.
    glibc may keep memory that fn frees and reuse it inside fn unless MALLOC_MMAP_THRESHOLD_ was set at
    process start; that reuse is real residency, but the method then says "vmhwm_heap_retained".
    """
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        result = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return result, int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    method = "vmhwm" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "vmhwm_heap_retained"
    release_free_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        method += "_noreset"   # the high-water mark may predate fn
    result = fn(*args, **kwargs)
    return result, vm_hwm(), method


M_MMAP_THRESHOLD = -3   # glibc mallopt parameters
M_TRIM_THRESHOLD = -1
MMAP_THRESHOLD = 65536
TRIM_THRESHOLD = 128 * 1024          # glibc's default; its dynamic threshold may have raised it to 64 MiB
FAST_MMAP_THRESHOLD = 32 * 2 ** 20   # glibc's own ceiling for its dynamic mmap threshold (64-bit)
_LAST_TRAINING_PEAK: dict = {}


def _mallopt(param: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except (OSError, AttributeError):
        return False


def pin_mmap_threshold() -> bool:
    """Make glibc serve every allocation >= 64 KiB with its own mmap from now on, as
    MALLOC_MMAP_THRESHOLD_=65536 does at process start: freed tensors leave the resident set, so VmHWM
    is the live-tensor peak and not the heap's. True when pinned (Linux glibc).

    Pin before the model loads (engine.run does, via set_heap_mode): pinned only before the first step, a
    process whose load freed large blocks keeps a heap that the steps then grow into. Measured (embedded
    nf4 r4, FPB, first training of its process, Xeon with AMX): 476 MiB above the loaded process pinned
    before the load, 636 pinned after it (585 with the trim threshold reset), 476 with the environment
    variable."""
    pinned = _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return pinned or os.environ.get("MALLOC_MMAP_THRESHOLD_") == str(MMAP_THRESHOLD)


def set_heap_mode(mode: str) -> bool:
    """How this process's glibc heap treats freed memory from now on (CPU; a CUDA run's tensors are not
    on it). True when the recorded peak will be the live-tensor peak the planner predicts.

    exact  every allocation >= 64 KiB is its own mmap, returned on free (pin_mmap_threshold): VmHWM is the
           live-tensor peak, at a price, because every step maps and zeroes its activations afresh:
           training runs 1.5-2.3x slower on CPU (embedded nf4 r4 on FPB, Xeon with AMX, 2 threads: 186
           tok/s pinned at process start, 280 pinned before the first step, 422 unpinned).
    fast   blocks up to 32 MiB are kept by the heap for reuse (glibc's own upper bound for its dynamic
           threshold): full speed, and the recorded peak is the process's true resident high-water mark,
           which includes what the heap keeps (same run: 803 MiB above the loaded process vs 476 exact).
    """
    if mode not in CPU_MEMORY_MODES:
        raise ConfigError(f"cpu_memory={mode!r}: expected one of {', '.join(CPU_MEMORY_MODES)}")
    if mode == "exact":
        return pin_mmap_threshold()
    _mallopt(M_MMAP_THRESHOLD, FAST_MMAP_THRESHOLD)
    return False


def measure_training_peak(fn, *args, exact: bool = True, **kwargs):
    """Run a training loop fn(*args, **kwargs); return (result, peaks) where peaks holds the train_info
    fields of the kit's one definition of peak training memory:

      peak_mem_bytes          training phase: the high-water mark during fn minus the live memory just
                              before it (the loaded process: model, adapter, tokenizer, data); what the
                              planner's Plan.training_bytes predicts
      process_peak_mem_bytes  whole process: the high-water mark from process start to the end of fn
                              (includes python/torch, the load-time transients, earlier work in the process)
      baseline_mem_bytes      the loaded process, measured just before fn
      peak_mem_method         cuda_max_allocated (torch allocator; excludes the CUDA context) or vmhwm
                              (CPU: VmHWM with large allocations mmap'ed, MALLOC_MMAP_THRESHOLD_ at start
                              or mallopt: set_heap_mode("exact")); vmhwm_heap_retained when exact=False
                              (set_heap_mode("fast")) or the threshold could not be set: the true resident
                              peak, including freed memory the heap keeps, which the planner does not predict
      peak_mem_definition / process_peak_mem_definition   the two definitions in words
    The same dict stays available to later code in this process via last_training_peak().
    """
    import torch

    global _LAST_TRAINING_PEAK
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        before_peak = int(torch.cuda.max_memory_allocated())   # since process start: load-time transients
        base = int(torch.cuda.memory_allocated())
        torch.cuda.reset_peak_memory_stats()
        result = fn(*args, **kwargs)
        torch.cuda.synchronize()
        peak, method = int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    else:
        method = "vmhwm" if exact and pin_mmap_threshold() else "vmhwm_heap_retained"
        before_peak = vm_hwm()   # read before the reset below: the whole process's high-water mark so far
        base = baseline_bytes()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            method += "_noreset"
        result = fn(*args, **kwargs)
        peak = vm_hwm()
    _LAST_TRAINING_PEAK = dict(peak_mem_bytes=max(0, peak - base), process_peak_mem_bytes=max(peak, before_peak),
                               baseline_mem_bytes=base, peak_mem_method=method, peak_mem_definition=PEAK_DEFINITION,
                               process_peak_mem_definition=PROCESS_PEAK_DEFINITION)
    return result, dict(_LAST_TRAINING_PEAK)


def _shape_key(shape) -> tuple[int, int]:
    n, p = (shape, 0) if isinstance(shape, (int, float)) else shape
    return int(n), int(p)


def unseen_shapes(shapes, compute_bytes: int, rank: int, remember: bool = False) -> float:
    """memory.plan's new_shapes: the distinct micro-batch shapes in `shapes` whose kernels this process has not
    built yet, the frozen model's (by compute width) and the adapter's (also by rank) each counting
    CPU_ADAPTER_SHARE of a shape. A shape is a padded length, or (padded length, prefix tokens shared once):
    two packed layouts of one length put different numbers of rows through every matmul (P + B x (n - P)),
    so oneDNN builds kernels for each. remember=True records them as built (the run is about to train)."""
    keys = {_shape_key(s) for s in shapes}
    frozen = {("frozen", compute_bytes) + k for k in keys} - _TRAINED_SHAPES
    adapter = {("adapter", compute_bytes, rank) + k for k in keys} - _TRAINED_SHAPES
    if remember:
        _TRAINED_SHAPES.update(frozen | adapter)
    return (1 - CPU_ADAPTER_SHARE) * len(frozen) + CPU_ADAPTER_SHARE * len(adapter)


def last_training_peak() -> dict:
    """The peaks of this process's latest measure_training_peak (empty before any): DDP and pipeline
    ranks other than 0 report theirs through this."""
    return dict(_LAST_TRAINING_PEAK)


def is_live_peak(train_info: dict) -> bool:
    """Whether train_info's peak is the quantity the planner predicts: the training phase's live tensors
    (PEAK_DEFINITION, measured on CUDA or with the exact heap), not a peak that includes a kept heap."""
    return is_training_phase(train_info) and train_info.get("peak_mem_method") in ("vmhwm", "cuda_max_allocated")


def is_training_phase(train_info: dict) -> bool:
    """Whether train_info.peak_mem_bytes follows PEAK_DEFINITION; results written before it hold the
    whole-process VmHWM of the training loop there."""
    return str(train_info.get("peak_mem_definition", "")).startswith("training phase")


# ------------------------------------------------------------------ CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finlora_utils", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("estimate", help="predict peak training memory")
    e.add_argument("--model", default="llama-3.1-8b", help="shipped name, hub id, local dir or config.json")
    e.add_argument("--bits", type=int, default=4, help="base weights: 16, 8 (int8) or 4 (NF4)")
    e.add_argument("--rank", type=int, default=None, help="default: 8 for 16/8-bit, 4 for 4-bit (the paper)")
    e.add_argument("--targets", default="q_proj,k_proj,v_proj",
                   help="LoRA target modules, comma-separated (all-linear: every projection)")
    e.add_argument("--seq-len", type=int, default=512, help="padded tokens per example")
    e.add_argument("--batch", type=int, default=None,
                   help="examples per step (per rank under DDP); default 1, or one per micro-batch for a "
                        "pipeline's --fit")
    e.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    e.add_argument("--label-only-logits", action="store_true",
                   help="the LM head only at label positions (the kit's training), not every position")
    e.add_argument("--gpus", type=int, default=1, help="devices (ranks); > 1 without --parallel means ddp")
    e.add_argument("--parallel", default="none", choices=PARALLEL)
    e.add_argument("--micro-batches", type=int, default=1,
                   help="pipeline micro-batches per batch; 0 (with --batch): the count a run with micro_batches=0 "
                        "takes where memory is not the limit (finlora_utils.microbatch), with its predicted efficiency")
    e.add_argument("--schedule", default="gpipe", choices=SCHEDULES,
                   help="pipeline schedule: gpipe keeps every micro-batch's activations in flight, 1f1b at most "
                        "(stages - s) on stage s")
    e.add_argument("--optimizer", default="adamw", choices=tuple(OPTIMIZER_BYTES))
    e.add_argument("--variant", default="lora", choices=VARIANTS)
    e.add_argument("--double-quant", action="store_true", help="4-bit: quantize the quantization constants too")
    e.add_argument("--zero1", action="store_true", help="shard optimizer states over the DDP ranks")
    e.add_argument("--device", default="cuda", choices=DEVICES)
    e.add_argument("--fit", type=float, default=None, metavar="GPU_GIB",
                   help="instead: the longest seq len (and largest batch) that fits in GPU_GIB")
    e.add_argument("--json", action="store_true")
    return p


@cli_entry
def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    chosen = None
    if a.micro_batches == 0 and a.parallel == "pipeline":
        if a.fit is not None:
            raise ConfigError("--micro-batches=0: expected a count >= 1 with --fit (the search starts from one row "
                              "per micro-batch)")
        if a.batch is None:
            raise ConfigError("--micro-batches=0: expected --batch too (the kit splits that global batch)")
        try:
            chosen = microbatch.choose(a.batch, a.gpus, a.schedule, a.device,
                                       compute=microbatch.compute_for({16: "bf16"}.get(a.bits, "nf4")))
        except ConfigError as err:   # name the CLI's flags, not the config fields they fill
            raise ConfigError(str(err).replace("batch_size=", "--batch=").replace("nproc=", "--gpus=")) from None
        a.micro_batches = chosen.micro_batches
    if a.batch is None:   # a pipeline's batch splits into its micro-batches, so --fit searches from one row each
        a.batch = a.micro_batches if a.fit is not None and a.parallel == "pipeline" else 1
    kw = dict(bits=a.bits, rank=a.rank, targets=a.targets, batch=a.batch, grad_checkpointing=a.grad_checkpointing,
              label_only_logits=a.label_only_logits, gpus=a.gpus, parallel=a.parallel, optimizer=a.optimizer,
              variant=a.variant, double_quant=a.double_quant, zero1=a.zero1, device=a.device,
              micro_batches=a.micro_batches, schedule=a.schedule)
    if a.gpus > 1 and a.parallel == "none":
        kw["parallel"] = "ddp"
    # a flag the plan would not use is a mistake to name, not a plan to print without it
    unused = [(a.parallel == "pipeline" and a.gpus < 2, "--parallel pipeline", "--gpus >= 2 (one stage per GPU)"),
              (a.schedule != "gpipe" and kw["parallel"] != "pipeline", f"--schedule {a.schedule}",
               "--parallel pipeline (a schedule orders a pipeline's micro-batches)"),
              (a.micro_batches != 1 and kw["parallel"] != "pipeline", f"--micro-batches {a.micro_batches}",
               "--parallel pipeline"),
              (a.zero1 and (kw["parallel"] != "ddp" or a.gpus < 2), "--zero1", "--gpus >= 2 under DDP: it shards "
               "the optimizer states over the ranks"),
              (a.double_quant and a.bits != 4, "--double-quant", "--bits 4 (it quantizes NF4's constants)")]
    for bad, flag, needs in unused:
        if bad:
            raise ConfigError(f"{flag}: expected {needs}")
    try:
        if a.fit is not None:
            s = max_seq_len_that_fits(a.fit, a.model, **kw)
            b = max_batch_that_fits(a.fit, a.model, seq_len=a.seq_len, **{k: v for k, v in kw.items() if k != "batch"})
            out = {"gpu_gib": a.fit, "max_seq_len": s, "at_batch": a.batch, "max_batch": b, "at_seq_len": a.seq_len}
            print(json.dumps(out) if a.json else
                  f"{a.fit:g} GiB: max seq len {s} at batch {a.batch}; max batch {b} at seq len {a.seq_len}")
            return 0
        p = plan(a.model, seq_len=a.seq_len, **kw)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(dict(p.to_dict(), **({"micro_batch_choice": chosen.as_dict()} if chosen else {})),
                         default=list))
        return 0
    if chosen:
        print(f"micro-batches: {chosen.micro_batches}, chosen by the kit: predicted pipeline efficiency "
              f"{chosen.efficiency:.2f} ({chosen.reason})")
    print(p.table())
    if not a.label_only_logits:   # the flag's default is the paper's recipe; the kit's own training differs
        kit = plan(a.model, seq_len=a.seq_len, **dict(kw, label_only_logits=True))
        print(f"logits at every position (FinLoRA's recipe); the kit's training takes the LM head at label "
              f"positions only: {kit.total_gib:.3f} GiB per device with --label-only-logits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
