"""LoRA / QLoRA finetuning in one process or as DDP replicas: the model, the loss and one optimizer step.

    from finlora_utils.config import TrainConfig
    from finlora_utils import train
    result = train.train(TrainConfig(tasks="fpb", precision="nf4", max_train_samples=400))

    python -m finlora_utils train --task fpb --precision nf4 --rank 4 --max-train-samples 400

Why a loop of our own and not transformers.Trainer / TRL's SFTTrainer: the loss needs the decoder's
hidden states at label positions only (lm_head never sees a prompt position, which is most of the
compute for 1-3 token answers), a checkpoint must hold the exact data order to resume mid-epoch to
the same adapter, and DDP must enter through one hook (`wrap_model`). The run's life (data, resume,
counters, checkpoints, results) is engine.run's; this module is its recipe for a whole-model step
(`Replica`) plus the pieces the pipeline recipe shares: build_model / with_adapter, loss_fn,
decide_grad_checkpointing, amp_dtype.

What FinLoRA does and we keep: prompt + target + eos tokenized (FinLoRA's train_lora.py), loss on
target + eos only, length-sorted dynamic padding, AdamW with linear warmup/decay, grad clipping at 1.
What we change for speed: no prepare_model_for_kbit_training (it upcasts embeddings and norms to
fp32), bf16 autocast where the hardware has it, no gradient checkpointing unless memory needs it
(the planner decides), and label-only logits.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.nn.functional as F

from . import memory, results, shared_prefix
from .artifacts import exclusive_run
from .config import PRECISION, ConfigError, TrainConfig, config_args, config_from_args
from .engine import Built, TrainData, drop_checkpoints, longest, results_default_dir, run
from .errors import cli_entry
from .tokenization import IGNORE, collate, padded_length, shard

MAX_GRAD_NORM = 1.0          # FinLoRA's (and transformers') default clipping
SHORT_ATTENTION = 128        # CPU: sequences up to this length use the math attention kernel


# ---------------------------------------------------------------- model

def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: none for fp32 (the exact reference); bf16 where the hardware computes it natively
    (AMX / AVX-512-BF16 CPUs ~6x fp32 matmul, Ampere+ GPUs), fp16 on older GPUs, else none."""
    if precision == "fp32":
        return None
    from .hardware import cuda_compute_dtype, default_compute_dtype

    if device.type == "cuda":
        return cuda_compute_dtype()

    return torch.bfloat16 if default_compute_dtype() == torch.bfloat16 else None


def build_model(config: TrainConfig, device: str | None = None):
    """(peft_model, tokenizer): the base model at config.precision with a fresh LoRA adapter.

    The seed is set first so the adapter's initialisation is reproducible. Adapter weights stay fp32
    (peft's autocast_adapter_dtype); the frozen base keeps its load dtype.
    """
    from .models import load_model

    torch.manual_seed(config.seed)
    model, tok = load_model(config.model, config.precision, config.double_quant, device=device)
    return with_adapter(config, model), tok


def with_adapter(config: TrainConfig, model):
    """`model` wrapped with a fresh LoRA adapter of config.lora, for training. Loading draws no random
    numbers, so with the seed set before the load the adapter's initial values depend on the seed only;
    peft draws them for every target module in order even where the base weight is on the meta device,
    so a pipeline stage gets the values the whole model would."""
    from peft import get_peft_model

    from .dropout import use_packed_masks
    from .lora import build_lora_config
    from .models import fix_bnb_cpu

    model.config.use_cache = False   # a KV cache in training is wasted memory
    peft_model = get_peft_model(model, build_lora_config(config.lora, model))
    fix_bnb_cpu(peft_model)          # bnb's packed bf16 CPU path corrupts LoRA grads after a no-grad forward
    use_packed_masks(peft_model)     # torch's CPU dropout mask was ~20 % of a LoRA step
    return peft_model


def causal_lm(model):
    """The transformers CausalLM inside a (DDP-wrapped / TrainModule / peft) model."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):   # DDP
            model = model.module
        elif isinstance(model, TrainModule):
            model = model.model
        elif hasattr(model, "get_base_model"):                                        # peft
            model = model.get_base_model()
        else:
            return model


def set_grad_checkpointing(model, on: bool) -> None:
    """Non-reentrant activation checkpointing (works with frozen inputs: no enable_input_require_grads)."""
    lm = causal_lm(model)
    if hasattr(lm, "activation_checkpointing_enable"):   # transformers >= 5.x names
        if on:
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif _checkpointing(lm):
            lm.activation_checkpointing_disable()
    elif on:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif _checkpointing(lm):
        lm.gradient_checkpointing_disable()


def _checkpointing(lm) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (deprecated, warns) to is_activation_checkpointing
    if hasattr(type(lm), "is_activation_checkpointing"):
        return bool(lm.is_activation_checkpointing)
    return bool(lm.is_gradient_checkpointing)


def memory_budget(device: torch.device) -> int:
    """Bytes a run may use: 90 % of the GPU, or on CPU what is available now plus what we hold."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9)
    return int((memory.available_bytes() + memory.current_bytes()) * 0.9)


def planned(config: TrainConfig, model, seq_len: int, batch: int, label_tokens: int, device: torch.device,
            grad_checkpointing: bool) -> memory.Plan:
    """The memory planner's prediction for this run's model, precision and LoRA at one padded batch shape."""
    from .lora import model_config

    prec = PRECISION[config.precision]
    return memory.plan(model_config(causal_lm(model)), bits=prec.planner_bits, rank=config.lora.rank,
                       targets=config.lora.targets, seq_len=seq_len, batch=batch, grad_checkpointing=grad_checkpointing,
                       label_only_logits=config.label_only_logits, label_tokens=label_tokens,
                       optimizer=config.optimizer, variant=config.lora.variant, dropout=config.lora.dropout,
                       double_quant=config.double_quant, device=device.type, **prec.planner_kwargs)


def decide_grad_checkpointing(config: TrainConfig, model, seq_len: int, batch: int, label_tokens: int,
                              device: torch.device) -> tuple[bool, str]:
    """on / off as configured; auto asks the planner whether the longest batch fits without checkpointing."""
    if config.grad_checkpointing != "auto":
        return config.grad_checkpointing == "on", "config"
    try:
        need = planned(config, model, seq_len, batch, label_tokens, device, grad_checkpointing=False).total_bytes
    except ConfigError as e:   # an architecture the planner does not know: train as configured, say why
        return False, f"planner cannot size this model ({e}); checkpointing off"
    budget = memory_budget(device)
    return need > budget, f"planner: {need / 2**30:.2f} GiB without checkpointing, budget {budget / 2**30:.2f} GiB"


def memory_plan(config: TrainConfig, model, lengths: list[int], batch: int, label_tokens: int,
                device: torch.device, grad_checkpointing: bool, gpus: int = 1,
                prefixes: list[int] | None = None) -> dict | None:
    """train_info.memory_plan: the planner's training-phase peak (memory.run_plan) at the batch shape of
    this run that it prices highest, with that shape, so a report can re-ask the planner the same
    question. `lengths`: the padded lengths the run's micro-batches take; `prefixes`: the tokens each of
    them shares once (shared_prefix.pack; 0 or None: a padded batch). On CPU the attention kernel
    depends on the length (attention_kernel, pipeline stages too), so the longest batch is not always the
    costliest. On CPU each length is priced with the kernels built for every shape met up to its last batch
    (new_shapes, memory.unseen_shapes), and the run's shapes are remembered as built for the next run in
    this process.
    None when the planner cannot size this model."""
    from .lora import model_config

    best = None
    prec = PRECISION.get(config.precision, PRECISION["bf16"])
    wide = memory.dtype_bytes(prec.planner_bits, device.type, **prec.planner_kwargs)["act"]
    lengths = list(lengths)
    shapes = list(zip(lengths, prefixes or [0] * len(lengths)))   # what oneDNN builds kernels for
    last = {n: i for i, n in enumerate(lengths)}
    shared = {}   # per length the fewest prefix tokens shared once: its costliest layout
    for n, p in shapes:
        shared[n] = min(shared.get(n, p), p)

    def built_by(seq: int) -> float:
        # CPU kernels stay built for the life of the process (memory.CPU_SHAPE_BYTES), so a batch of this length
        # peaks highest the last time it runs, with the kernels of every shape met up to then
        if device.type != "cpu":
            return 0
        return memory.unseen_shapes(shapes[:last[seq] + 1], wide, config.lora.rank)

    try:
        cfg = model_config(causal_lm(model))
        prev = memory.last_training_peak()   # warm for this device only: a CPU training leaves a GPU's BLAS cold
        warm = bool(prev) and prev["peak_mem_method"].startswith("cuda") == (device.type == "cuda")
        for seq in sorted(set(lengths)):
            shape = dict(seq_len=seq, batch=batch, shared_prefix=shared[seq], label_tokens=label_tokens,
                         grad_checkpointing=grad_checkpointing,
                         math_attention=(device.type == "cpu" and seq <= SHORT_ATTENTION
                                         and not grad_checkpointing),
                         device=device.type, gpus=gpus, warm_process=warm,
                         new_shapes=built_by(seq))
            p = memory.run_plan(config.to_dict(), shape, model=cfg)
            if best is None or p.training_bytes > best["predicted_peak_mem_bytes"]:
                best = dict(shape, predicted_peak_mem_bytes=p.training_bytes, predicted_total_bytes=p.total_bytes,
                            predicted_per_device=[d["training_bytes"] for d in p.per_device])
    except (ConfigError, KeyError, ValueError):
        return None
    finally:
        if device.type == "cpu":
            memory.unseen_shapes(shapes, wide, config.lora.rank, remember=True)   # this run is about to build them
    return best


# ---------------------------------------------------------------- loss and step

def _right_padded(mask: torch.Tensor) -> bool:
    return bool((mask[:, :-1] >= mask[:, 1:]).all())


def attention_kernel(seq_len: int, device: torch.device, checkpointing: bool):
    """On CPU, plain-matmul attention for short sequences: the fused flash kernel's bf16 backward costs
    ~2x the matmul path below ~128 tokens (FPB prompts are ~60-90), and wins above it. Not with gradient
    checkpointing: its recomputation in backward runs outside this context and must match the forward.
    The context must hold over forward and backward (a pipeline schedule's step runs both)."""
    if device.type != "cpu" or seq_len > SHORT_ATTENTION or checkpointing:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def loss_fn(model, batch: dict, label_only: bool = True) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over target tokens, their count) for a collated batch.

    label_only: run the decoder alone, gather the hidden states whose next token has a label and apply
    lm_head there only: a 3-token answer after a 60-token prompt needs 3 of 63 vocabulary projections.
    The same numbers as the full-logits path (tests/test_train.py checks loss and gradients).
    With right padding the attention mask changes nothing at labelled positions (causal attention never
    looks right), so it is dropped: SDPA then takes its is_causal fast path. A packed batch
    (shared_prefix.pack: the rows' common prefix once) runs as one sequence through the layout's attention,
    always with label-only logits (the same numbers as full logits).
    """
    lm = causal_lm(model)
    if shared_prefix.is_packed(batch):
        p, _, s = shared_prefix.layout(batch)
        with attention_kernel(p + s, batch["input_ids"].device, False), shared_prefix.attention(lm):
            decoder = getattr(lm, lm.base_model_prefix)
            hidden = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                             **shared_prefix.forward_kwargs(batch)).last_hidden_state
        return _head_loss(lm, hidden[0, batch["gather"]], batch["targets"]), int(batch["targets"].numel())
    input_ids, labels = batch["input_ids"], batch["labels"]
    mask = batch.get("attention_mask")
    if mask is not None and _right_padded(mask):
        mask = None
    targets = labels[:, 1:]
    where = targets != IGNORE
    with attention_kernel(input_ids.shape[1], input_ids.device, _checkpointing(lm)):
        if label_only:
            decoder = getattr(lm, lm.base_model_prefix)
            hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
            return _head_loss(lm, hidden[:, :-1][where], targets[where]), int(where.sum())
        logits = lm(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1][where]
    return _logits_loss(lm, logits, targets[where]), int(where.sum())


def _head_loss(lm, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _logits_loss(lm, lm.get_output_embeddings()(hidden), targets)


def _logits_loss(lm, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    cap = getattr(lm.config, "final_logit_softcapping", None)   # Gemma-2 style models
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), targets, reduction="sum")


class TrainModule(torch.nn.Module):
    """The model as one module whose forward returns the loss, so DDP (which syncs gradients only for
    calls through its own forward) can wrap it: wrap_model(TrainModule(peft_model))."""

    def __init__(self, model, label_only: bool = True):
        super().__init__()
        self.model, self.label_only = model, label_only

    def forward(self, batch: dict):
        return loss_fn(self.model, batch, self.label_only)


def train_step(module, optimizer, scheduler, micro_batches: list[dict], n_targets: int, world_size: int = 1,
               amp: torch.dtype | None = None, scaler=None, weights: list[float] | None = None) -> float:
    """One optimizer step over micro-batches (gradient accumulation); returns this rank's summed loss.

    The loss is normalised by n_targets, the target tokens of the whole global step (all micro-batches,
    all ranks), so accumulation and DDP (which averages over ranks, hence x world_size) give the
    single-process gradient exactly.
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    device = next(iter(params)).device
    total = 0.0
    for j, batch in enumerate(micro_batches):
        last = j == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync()
        batch = {k: v.to(device) for k, v in batch.items()}
        with sync:
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss_sum, _ = module(batch)
            w = 1.0 if weights is None else weights[j]
            loss = loss_sum * (w * world_size / max(n_targets, 1))
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += float(loss_sum.detach()) * w
    if scaler is not None:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


# ---------------------------------------------------------------- the run

class Replica:
    """The engine's recipe for one process or one DDP replica per rank: the whole model on every rank, each
    global micro-batch sharded across the ranks (wrap_model(TrainModule) -> e.g. DistributedDataParallel)."""

    label = "train"

    def __init__(self, rank: int = 0, world_size: int = 1, wrap_model=None, device: str | None = None):
        self.rank, self.world_size, self.wrap_model, self.device = rank, world_size, wrap_model, device
        self.writes_checkpoints = rank == 0   # every replica holds the same adapter and optimizer state

    def check(self, config: TrainConfig) -> None:
        # torchrun sets WORLD_SIZE for every rank (1 too); without it a ddp / pipeline config would train one
        # plain process and its results would still say ddp
        if config.parallel != "none" and self.world_size == 1 and "WORLD_SIZE" not in os.environ:
            raise ConfigError(
                f"parallel={config.parallel!r}: train trains one process; a {config.parallel} run goes through "
                f"torchrun (with a timeout): `python -m finlora_utils parallel --parallel {config.parallel} --nproc "
                f"{max(config.nproc, 2)} ...` with the same flags, or parallel.launch(config) in Python")
        if config.batch_size < self.world_size:
            raise ConfigError(f"batch_size={config.batch_size}: expected >= world_size ({self.world_size}); every "
                              "rank needs a share of each micro-batch")
        if config.optimizer != "adamw" and not torch.cuda.is_available():
            raise ConfigError(f"optimizer={config.optimizer!r}: expected adamw on CPU (8-bit and paged optimizers "
                              "need CUDA)")

    def checkpoint_root(self, run_dir):
        return run_dir

    def discard(self, root) -> None:
        if self.rank == 0:
            drop_checkpoints(root)

    def build(self, config: TrainConfig, data: TrainData) -> Built:
        model, self.tok = build_model(config, self.device)
        dev = next(p.device for p in model.parameters() if p.requires_grad)
        seq_len, label_tokens = longest(data.examples)
        ckpt_on, why = decide_grad_checkpointing(config, model, seq_len, -(-config.batch_size // self.world_size),
                                                 label_tokens, dev)
        set_grad_checkpointing(model, ckpt_on)
        self.pack, self.pack_why = decide_share_prefix(config, model, ckpt_on, seq_len)
        shapes = [batch_shape([data.examples[i] for i in mine], config.max_seq_len, self.pack)
                  for st in data.plan for mb in st if (mine := shard(mb, self.rank, self.world_size) or mb[:1])]
        mem_plan = memory_plan(config, model, [n for n, _ in shapes], -(-config.batch_size // self.world_size),
                               label_tokens, dev, ckpt_on, self.world_size, prefixes=[p for _, p in shapes])
        module = TrainModule(model, config.label_only_logits)
        self.module = self.wrap_model(module) if self.wrap_model is not None else module
        model.train()
        amp = amp_dtype(config.precision, dev)
        self.examples, self.model, self.max_len = data.examples, model, config.max_seq_len
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.built = Built(model, self.params, dev, amp, torch.amp.GradScaler(dev.type) if amp == torch.float16 else None,
                           ckpt_on, why, mem_plan)
        return self.built

    def agree(self, state, root):
        return state   # every replica reads the one checkpoint rank 0 wrote

    def fresh(self) -> dict:
        return {}

    def describe(self) -> str:
        return ", shared prefix once per micro-batch" if self.pack else f", padded batches ({self.pack_why})"

    def step(self, step: list[list[int]], counts: dict, optimizer, scheduler) -> float:
        micro, weights = shard_step(self.examples, step, self.rank, self.world_size, self.tok.pad_token_id,
                                    self.max_len, self.pack)
        b = self.built
        loss_sum = train_step(self.module, optimizer, scheduler, micro, counts["target_tokens"], self.world_size,
                              b.amp, b.scaler, weights)
        return _global_sum(loss_sum, b.device, self.world_size) / counts["target_tokens"]

    def adapter(self):
        return self.model if self.rank == 0 else None

    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def info(self) -> dict:
        return dict(share_prefix=self.pack, share_prefix_reason=self.pack_why)


def decide_share_prefix(config: TrainConfig, model, checkpointing: bool, longest_tokens: int) -> tuple[bool, str]:
    """(pack micro-batches with their shared prompt prefix once, why): as configured, where the loss and the
    model allow it (label-only logits, no gradient checkpointing, a supported attention)."""
    if not config.share_prefix:
        return False, "share_prefix off"
    if not config.label_only_logits:
        return False, "full-vocabulary logits (label_only_logits off)"
    if checkpointing:
        return False, "gradient checkpointing recomputes attention outside the packed forward"
    ok, why = shared_prefix.supports(causal_lm(model), longest_tokens)
    return ok, "config" if ok else why


def batch_shape(rows: list[dict], max_len: int, pack: bool) -> tuple[int, int]:
    """(padded length per example, shared prefix tokens) of a micro-batch as shard_step lays it out."""
    if pack and (shape := shared_prefix.layout_of(rows, max_len)) is not None:
        p, s = shape
        return p + s, p
    return padded_length(max(len(e["input_ids"]) for e in rows), max_len), 0


def shard_step(ex: list[dict], step: list[list[int]], rank: int, world_size: int, pad_id: int, max_len: int,
               pack: bool = False):
    """Collated micro-batches of this rank, each padded to padded_length of its longest example (with `pack`,
    the shared-prefix layout where the rows share a prefix: shared_prefix.pack), and their weights (0 for an
    empty shard, which still runs so that DDP's all-reduce sees every rank)."""
    micro, weights = [], []
    for mb in step:
        mine = shard(mb, rank, world_size)
        rows = [ex[i] for i in (mine or mb[:1])]
        packed = shared_prefix.pack(rows, pad_id, max_len) if pack else None
        micro.append(packed if packed is not None else
                     collate(rows, pad_id, padded_length(max(len(e["input_ids"]) for e in rows), max_len)))
        weights.append(1.0 if mine else 0.0)
    return micro, weights


@exclusive_run
def train(config: TrainConfig, rank: int = 0, world_size: int = 1, wrap_model=None, preset: str | None = None,
          results_dir=None, data_dir=None, force: bool = False, device: str | None = None,
          log=print, on_step=None) -> dict:
    """Train one adapter in this process (or as one DDP replica); returns the results dict (with '_path',
    the results JSON written by rank 0); other ranks return {}.

    Resumes from the run folder's latest checkpoint when there is one; a finished run is returned as is
    unless force=True. rank/world_size/wrap_model are the DDP hooks: every rank builds the same batch plan
    and takes its shard of each micro-batch; wrap_model(TrainModule) -> e.g. DistributedDataParallel.
    on_step(step, loss) is called after every optimizer step (progress bars, failure drills); an on_step with a
    begin(total_steps, start_step) method hears the plan's size first (engine.run).
    """
    return run(config, Replica(rank, world_size, wrap_model, device), preset=preset, results_dir=results_dir,
               data_dir=data_dir, force=force, log=log, on_step=on_step)


def _global_sum(x: float, device, world_size: int) -> float:
    """Sum a scalar over DDP ranks (for the logged loss); a no-op in one process."""
    import torch.distributed as dist

    if world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


# ---------------------------------------------------------------- notebook helpers

def configs_from_spec(spec: str, alpha: float = 16.0, dropout: float = 0.05, **common) -> list[TrainConfig]:
    """'bf16:8,int8:8,nf4:4' (precision:rank pairs, FinLoRA's three) -> one TrainConfig each."""
    from .config import LoraSettings

    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        precision, _, rank = part.partition(":")
        if not rank.isdigit():
            raise ConfigError(f"CONFIGS={spec!r}: expected precision:rank pairs such as 'bf16:8,int8:8,nf4:4'")
        out.append(TrainConfig(precision=precision, lora=LoraSettings(rank=int(rank), alpha=alpha,
                                                                      dropout=dropout), **common))
    if not out:
        raise ConfigError(f"CONFIGS={spec!r}: expected at least one precision:rank pair")
    return out


def summary_table(results_list: list[dict]):
    """One row per run: what it cost and where its loss went (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for r in results_list:
        ti, cfg = r["train_info"], r["run_info"]["config"]
        curve = [loss for _, loss in ti["loss_curve"]]
        k = max(1, len(curve) // 10)   # first / last 10 % of the steps, so one noisy batch does not decide
        rows.append(dict(run_id=r["run_id"], precision=cfg["precision"], rank=cfg["lora"]["rank"],
                         steps=ti["steps"], examples=ti["examples"], wall_s=round(ti["wall_s"], 1),
                         tokens_per_s=round(ti["tokens_per_s"], 1), peak_mem_gib=round(ti["peak_mem_bytes"] / 2**30, 3),
                         loss_start=round(sum(curve[:k]) / k, 4), loss_end=round(sum(curve[-k:]) / k, 4),
                         adapter_kib=round(ti["adapter_bytes"] / 1024, 1), grad_ckpt=ti["grad_checkpointing"],
                         truncated=sum(ti["truncated"].values())))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- CLI

@cli_entry
def main(argv=None) -> int:
    """python -m finlora_utils train --task fpb --precision nf4 --rank 4 [any TrainConfig field as --field]"""
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m finlora_utils train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="TrainConfig JSON to start from (flags override it)")
    config_args(ap)
    ap.add_argument("--task", dest="tasks", help="alias of --tasks (comma-separated for a multi-task mix)")
    ap.add_argument("--preset", default=None, help="recorded in run_info.preset")
    ap.add_argument("--results-dir", default=None, help="where the results JSON goes (default reports/results)")
    ap.add_argument("--data-dir", default=None, help="FINLORA_DATA_DIR for this run")
    ap.add_argument("--force", action="store_true", help="retrain even if a finished result exists")
    ns = ap.parse_args(argv)
    try:
        config = config_from_args(ns)
        results.make_folder(ns.results_dir or results_default_dir())   # a file in the way fails before training
        res = train(config, preset=ns.preset, results_dir=ns.results_dir, data_dir=ns.data_dir, force=ns.force)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(res["_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
