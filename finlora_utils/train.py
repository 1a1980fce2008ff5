"""LoRA / QLoRA finetuning on FinLoRA tasks: build, tokenize, train, checkpoint, resume, report.

    from finlora_utils.config import TrainConfig
    from finlora_utils import train
    result = train.train(TrainConfig(tasks="fpb", precision="nf4", max_train_samples=400))

    python -m finlora_utils.train --task fpb --precision nf4 --rank 4 --max-train-samples 400

Why a loop of our own and not transformers.Trainer / TRL's SFTTrainer: the loss needs the decoder's
hidden states at label positions only (lm_head never sees a prompt position, which is most of the
compute for 1-3 token answers), a checkpoint must hold the exact data order to resume mid-epoch to
the same adapter, and DDP must enter through one hook (`wrap_model`). The pieces are separate
functions so the parallel code reuses them: build_model, build_data, loss_fn, train_step,
save_checkpoint / load_checkpoint, and train() which ties them together.

What FinLoRA does and we keep: prompt + target + eos tokenized (FinLoRA's train_lora.py), loss on
target + eos only, length-sorted dynamic padding, AdamW with linear warmup/decay, grad clipping at 1.
What we change for speed: no prepare_model_for_kbit_training (it upcasts embeddings and norms to
fp32), bf16 autocast where the hardware has it, no gradient checkpointing unless memory needs it
(the planner decides), and label-only logits.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import memory, results
from .artifacts import (CKPT_DIR, as_stored, differences, finished_result, load_checkpoint, model_card,
                        save_adapter, save_checkpoint)
from .config import ConfigError, TrainConfig
from .tokenization import IGNORE, batch_plan, collate, encode_dataset, shard

_as_stored, _differences = as_stored, differences   # older names, still used by pipeline.py

MAX_GRAD_NORM = 1.0          # FinLoRA's (and transformers') default clipping
SHORT_ATTENTION = 128        # CPU: sequences up to this length use the math attention kernel


# ---------------------------------------------------------------- model

def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: none for fp32 (the exact reference); bf16 where the hardware computes it natively
    (AMX / AVX-512-BF16 CPUs ~6x fp32 matmul, Ampere+ GPUs), fp16 on older GPUs, else none."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    from .models import default_compute_dtype

    return torch.bfloat16 if default_compute_dtype() == torch.bfloat16 else None


def build_model(config: TrainConfig, device: str | None = None):
    """(peft_model, tokenizer): the base model at config.precision with a fresh LoRA adapter.

    The seed is set first so the adapter's initialisation is reproducible. Adapter weights stay fp32
    (peft's autocast_adapter_dtype); the frozen base keeps its load dtype.
    """
    from peft import get_peft_model

    from .lora import build_lora_config
    from .models import fix_bnb_cpu, load_model

    from transformers.utils import logging as hf_logging

    torch.manual_seed(config.seed)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()   # a 272-step 'Loading weights' bar per run buries the training log
    try:
        model, tok = load_model(config.model, config.precision, config.double_quant, device=device)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.config.use_cache = False   # a KV cache in training is wasted memory
    peft_model = get_peft_model(model, build_lora_config(config.lora, model))
    fix_bnb_cpu(peft_model)          # bnb's packed bf16 CPU path corrupts LoRA grads after a no-grad forward
    return peft_model, tok


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
    meminfo = Path("/proc/meminfo").read_text()
    avail = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemAvailable"))) * 1024
    return int((avail + memory.current_bytes()) * 0.9)


def planned(config: TrainConfig, model, seq_len: int, batch: int, label_tokens: int, device: torch.device,
            grad_checkpointing: bool) -> memory.Plan:
    """The memory planner's prediction for this run's model, precision and LoRA at one padded batch shape."""
    from .lora import model_config

    kw = dict(compute_bytes=4, base_bytes=4) if config.precision == "fp32" else {}   # the planner knows 16/8/4 bits
    return memory.plan(model_config(causal_lm(model)), bits=min(config.bits, 16), rank=config.lora.rank,
                       targets=config.lora.targets, seq_len=seq_len, batch=batch, grad_checkpointing=grad_checkpointing,
                       label_only_logits=config.label_only_logits, label_tokens=label_tokens,
                       optimizer=config.optimizer, variant=config.lora.variant, dropout=config.lora.dropout,
                       double_quant=config.double_quant, device=device.type, **kw)


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


# ---------------------------------------------------------------- data

@dataclass
class TrainData:
    examples: list[dict]          # input_ids, labels, task, truncated
    plan: list[list[list[int]]]   # steps -> micro-batches -> example indices (global, before sharding)
    truncated: dict[str, int]     # per task
    source: str                   # real | sample | mixed


def build_data(config: TrainConfig, tok, data_dir=None) -> TrainData:
    """Load the train split(s), tokenize with masking/truncation, and plan the batches.

    Fails (ConfigError) on an unknown task or a max_seq_len too small for a prompt, before any model loads.
    """
    from . import data

    for t in config.tasks:
        if t not in data.TASKS:
            raise ConfigError(f"tasks={t!r}: unknown task; expected one of {', '.join(data.task_names())}")
    ds = data.load_tasks(list(config.tasks), config.train_split, data_dir, config.max_train_samples or None,
                         config.seed)
    examples, truncated = encode_dataset(ds, tok, config.max_seq_len, config.truncation)
    lengths = [len(e["input_ids"]) for e in examples]
    plan = batch_plan(lengths, config.batch_size, config.grad_accum, config.epochs, config.max_steps, config.seed)
    return TrainData(examples, plan, truncated, data.source_of(ds))


# ---------------------------------------------------------------- loss and step

def _right_padded(mask: torch.Tensor) -> bool:
    return bool((mask[:, :-1] >= mask[:, 1:]).all())


def _attention_kernel(lm, seq_len: int, device: torch.device):
    """On CPU, plain-matmul attention for short sequences: the fused flash kernel's bf16 backward costs
    ~2x the matmul path below ~128 tokens (FPB prompts are ~60-90), and wins above it. Not with gradient
    checkpointing: its recomputation in backward runs outside this context and must match the forward."""
    if device.type != "cpu" or seq_len > SHORT_ATTENTION or _checkpointing(lm):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def loss_fn(model, batch: dict, label_only: bool = True) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over target tokens, their count) for a collated batch.

    label_only: run the decoder alone, gather the hidden states whose next token has a label and apply
    lm_head there only: a 3-token answer after a 60-token prompt needs 3 of 63 vocabulary projections.
    The same numbers as the full-logits path (tests/test_train.py checks loss and gradients).
    With right padding the attention mask changes nothing at labelled positions (causal attention never
    looks right), so it is dropped: SDPA then takes its is_causal fast path.
    """
    input_ids, labels = batch["input_ids"], batch["labels"]
    mask = batch.get("attention_mask")
    if mask is not None and _right_padded(mask):
        mask = None
    lm = causal_lm(model)
    targets = labels[:, 1:]
    where = targets != IGNORE
    with _attention_kernel(lm, input_ids.shape[1], input_ids.device):
        if label_only:
            decoder = getattr(lm, lm.base_model_prefix)
            hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
            logits = lm.get_output_embeddings()(hidden[:, :-1][where])
        else:
            logits = lm(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1][where]
    cap = getattr(lm.config, "final_logit_softcapping", None)   # Gemma-2 style models
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), targets[where], reduction="sum"), int(where.sum())


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


def make_optimizer(config: TrainConfig, params, total_steps: int):
    """AdamW (torch), or bitsandbytes 8-bit / paged 8-bit AdamW on CUDA; linear warmup then decay."""
    from transformers import get_linear_schedule_with_warmup

    if config.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        if not torch.cuda.is_available():
            raise ConfigError(f"optimizer={config.optimizer!r}: expected adamw on CPU (8-bit and paged "
                              "optimizers need CUDA)")
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if config.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
        opt = cls(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = math.ceil(config.warmup_ratio * total_steps)   # as transformers' Trainer rounds it
    return opt, get_linear_schedule_with_warmup(opt, warmup, total_steps)


# ---------------------------------------------------------------- the run

def _step_batches(ex: list[dict], step: list[list[int]], rank: int, world_size: int, pad_id: int):
    """Collated micro-batches of this rank, their weights (0 for an empty shard, which still runs so that
    DDP's all-reduce sees every rank) and the step's global counters."""
    micro, weights = [], []
    for mb in step:
        mine = shard(mb, rank, world_size)
        micro.append(collate([ex[i] for i in (mine or mb[:1])], pad_id))
        weights.append(1.0 if mine else 0.0)
    lens = [[len(ex[i]["input_ids"]) for i in mb] for mb in step]
    counts = dict(examples=sum(map(len, lens)), tokens=sum(len(x) * max(x) for x in lens),
                  nonpad_tokens=sum(map(sum, lens)),
                  target_tokens=sum(len(ex[i]["labels"]) - ex[i]["labels"].count(IGNORE) for mb in step for i in mb))
    return micro, weights, counts


def train(config: TrainConfig, rank: int = 0, world_size: int = 1, wrap_model=None, preset: str | None = None,
          results_dir: str | Path | None = None, data_dir=None, force: bool = False, device: str | None = None,
          log=print, on_step=None) -> dict:
    """Train one adapter; returns the results dict (with '_path', the results JSON written by rank 0).

    Resumes from the run folder's latest checkpoint when there is one; a finished run is returned as is
    unless force=True. rank/world_size/wrap_model are the DDP hooks: every rank builds the same batch plan
    and takes its shard of each micro-batch; wrap_model(TrainModule) -> e.g. DistributedDataParallel.
    on_step(step, loss) is called after every optimizer step (progress bars, failure drills); an on_step with a
    begin(total_steps, start_step) method hears the plan's size first.
    Other ranks return {}.
    """
    from .models import load_tokenizer

    config.validate()
    if config.batch_size < world_size:
        raise ConfigError(f"batch_size={config.batch_size}: expected >= world_size ({world_size}); every rank "
                          "needs a share of each micro-batch")
    if config.optimizer != "adamw" and not torch.cuda.is_available():
        raise ConfigError(f"optimizer={config.optimizer!r}: expected adamw on CPU (8-bit and paged optimizers "
                          "need CUDA)")
    run_id, run_dir = config.run_id(), Path(config.output_dir) / config.run_id()
    results_path = Path(results_dir or results_default_dir()) / f"{run_id}.json"
    done = None if force else finished_result(config, results_path, run_dir)
    if done is not None:
        log(f"[train {run_id}] finished earlier: {results_path} (force=True retrains)")
        return dict(done, _path=str(results_path))
    data = build_data(config, load_tokenizer(config.model), data_dir)   # data errors before the model loads
    if force and rank == 0:
        shutil.rmtree(run_dir / CKPT_DIR, ignore_errors=True)
    model, tok = build_model(config, device)
    dev = next(p.device for p in model.parameters() if p.requires_grad)
    ex = data.examples
    ckpt_on, why = decide_grad_checkpointing(
        config, model, max(len(e["input_ids"]) for e in ex), -(-config.batch_size // world_size),
        max(len(e["labels"]) - e["labels"].count(IGNORE) for e in ex), dev)
    set_grad_checkpointing(model, ckpt_on)
    module = TrainModule(model, config.label_only_logits)
    module = wrap_model(module) if wrap_model is not None else module
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(config, params, len(data.plan))
    amp = amp_dtype(config.precision, dev)
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
    state = None if force else load_checkpoint(run_dir, model, optimizer, scheduler, scaler)
    if state is not None:
        diff = differences(state["config"], as_stored(config))
        if diff:
            raise ConfigError(f"{diff[0]}={getattr(config, diff[0], None)!r}: the checkpoint in {run_dir} was made "
                              f"with {diff[0]}={state['config'].get(diff[0])!r}; expected force=True to start over")
        log(f"[train {run_id}] resuming from step {state['step']}/{len(state['plan'])}")
    state = state or dict(step=0, plan=data.plan, loss_curve=[],
                          stats=dict(examples=0, tokens=0, nonpad_tokens=0, target_tokens=0, wall_s=0.0, cpu_s=0.0))
    plan, stats, curve, start = state["plan"], state["stats"], state["loss_curve"], state["step"]
    amp_name = str(amp).replace("torch.", "") if amp else None
    log(f"[train {run_id}] {len(ex)} examples, {len(plan)} steps, {config.precision}, amp {amp_name}, "
        f"grad checkpointing {'on' if ckpt_on else 'off'} ({why}), {dev}, truncated {data.truncated}")
    if hasattr(on_step, "begin"):   # a progress display needs the step count before the first step
        on_step.begin(len(plan), start)

    def loop():
        t_start = t_mark = time.time()
        c_mark = time.process_time()   # CPU seconds of all threads: with wall_s, shows a contended machine
        session_tokens = 0
        for step in range(start, len(plan)):
            micro, weights, counts = _step_batches(ex, plan[step], rank, world_size, tok.pad_token_id)
            loss_sum = train_step(module, optimizer, scheduler, micro, counts["target_tokens"], world_size, amp,
                                  scaler, weights)
            loss = _global_sum(loss_sum, dev, world_size) / counts["target_tokens"]
            curve.append([step + 1, round(loss, 6)])
            for k, v in counts.items():
                stats[k] += v
            session_tokens += counts["nonpad_tokens"]
            now, cpu_now = time.time(), time.process_time()
            stats["wall_s"] += now - t_mark
            stats["cpu_s"] = stats.get("cpu_s", 0.0) + cpu_now - c_mark
            t_mark, c_mark = now, cpu_now
            if rank == 0 and config.save_every and (step + 1) % config.save_every == 0 and step + 1 < len(plan):
                save_checkpoint(run_dir, model, optimizer, scheduler, scaler, dict(
                    step=step + 1, plan=plan, stats=stats, loss_curve=curve, config=as_stored(config)))
            if (step + 1) % config.log_every == 0 or step + 1 == len(plan):
                el = now - t_start
                log(f"[train {run_id}] step {step + 1}/{len(plan)}  loss {loss:.4f}  {session_tokens / el:.0f} tok/s"
                    f"  {el:.0f}s elapsed  eta {el / (step + 1 - start) * (len(plan) - step - 1):.0f}s")
            if on_step is not None:
                on_step(step + 1, loss)

    _, peak, method = memory.measure_peak(loop)
    if rank != 0:
        return {}
    wall = max(stats["wall_s"], 1e-9)
    info = dict(stats, steps=len(plan), tokens_per_s=stats["nonpad_tokens"] / wall,
                target_tokens_per_s=stats["target_tokens"] / wall, peak_mem_bytes=peak, peak_mem_method=method,
                loss_curve=curve, truncated=data.truncated, examples_per_task=_count_tasks(ex),
                grad_checkpointing=ckpt_on, grad_checkpointing_reason=why, label_only_logits=config.label_only_logits,
                amp_dtype=amp_name, device=str(dev), world_size=world_size,
                trainable_params=sum(p.numel() for p in params), resumed_from_step=start or None)
    adapter_dir = run_dir / "adapter"
    info["adapter_bytes"] = save_adapter(model, adapter_dir, model_card(config, info, base_model_id(config.model)))
    info["adapter_path"] = str(adapter_dir.resolve())
    res = results.new_result(run_id, as_stored(config), config.seed, preset, data.source)
    res["train_info"] = info
    results.write_json(results_path, res)
    shutil.rmtree(run_dir / CKPT_DIR, ignore_errors=True)   # the adapter and results supersede them
    log(f"[train {run_id}] done: {len(plan)} steps in {stats['wall_s']:.1f}s, final loss {curve[-1][1]:.4f}, "
        f"peak {peak / 2**30:.2f} GiB ({method}), results {results_path}")
    return dict(res, _path=str(results_path))


def base_model_id(name: str) -> str:
    from .models import EMBEDDED, EMBEDDED_HUB_ID, resolve_model_path

    return EMBEDDED_HUB_ID if name == EMBEDDED else resolve_model_path(name)


def results_default_dir() -> Path:
    from .paths import reports_dir

    return reports_dir() / "results"


def _count_tasks(examples: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in examples:
        out[e["task"]] = out.get(e["task"], 0) + 1
    return out


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

def main(argv=None) -> int:
    """python -m finlora_utils.train --task fpb --precision nf4 --rank 4 [any TrainConfig field as --field]"""
    import argparse

    from .parallel import _config_args, config_from_args   # one flag per TrainConfig field, shared with torchrun

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m finlora_utils.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="TrainConfig JSON to start from (flags override it)")
    _config_args(ap)
    ap.add_argument("--task", dest="tasks", help="alias of --tasks (comma-separated for a multi-task mix)")
    for f in ("rank", "alpha", "dropout", "targets", "variant"):
        ap.add_argument(f"--{f}", dest=f"lora_{f}", help=f"alias of --lora-{f}")
    ap.add_argument("--preset", default=None, help="recorded in run_info.preset")
    ap.add_argument("--results-dir", default=None, help="where the results JSON goes (default reports/results)")
    ap.add_argument("--data-dir", default=None, help="FINLORA_DATA_DIR for this run")
    ap.add_argument("--force", action="store_true", help="retrain even if a finished result exists")
    ns = ap.parse_args(argv)
    try:
        config = config_from_args(ns)
        res = train(config, preset=ns.preset, results_dir=ns.results_dir, data_dir=ns.data_dir, force=ns.force)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(res["_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
