"""Pipeline-parallel LoRA finetuning with torch.distributed.pipelining: one stage per rank.

Each rank loads and quantizes only its own stage (stage_weights.load_partial: the architecture on the
meta device, the stage's tensors read from the safetensors files): embeddings + the first decoder
layers on stage 0, later layers on the middle stages, final norm + lm_head on the last stage (which
also computes the loss, with labels passed to it). The LoRA adapter is initialised as single-process
training initialises it (same seed, same values: train.with_adapter). Layers per stage come from the
memory planner.
`PipelineStage` is built by hand (tracing does not see through bitsandbytes layers) and run with
`ScheduleGPipe` or `Schedule1F1B`. Each rank optimises its own LoRA parameters; at the end rank 0
gathers every stage's LoRA tensors and saves one standard PEFT adapter.

Shapes: a PipelineStage fixes its activation shapes at its first step, so every step pads its
micro-batches to one length rounded up to PAD_MULTIPLE, and keeps one stage + schedule per shape. The first
stage object built infers its shapes (torch runs a real forward and an input-gradient backward of one chunk to do
so); the later ones are given them, built from that chunk's dtypes (StageRunner), or every new length would cost
about a chunk's work again.
Where the examples share a prompt prefix (TrainConfig.share_prefix, as in train.py), each pipeline chunk is
one packed sequence (shared_prefix.pack), every chunk of a batch in the same layout, so the schedule's split
along dim 0 hands each chunk its own packed row; the layout travels on the stage modules, not between them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from . import microbatch, shared_prefix
from .config import FORCE_HINT, PRECISION, ConfigError, TrainConfig
from .engine import Built, longest, run
from .tokenization import IGNORE, collate, padded_length
from .train import (MAX_GRAD_NORM, amp_dtype, attention_kernel, decide_grad_checkpointing, decide_share_prefix,
                    memory_plan, set_grad_checkpointing, with_adapter)

PAD_MULTIPLE = 16   # pad sequence length up to a multiple of this: few distinct shapes, few stage objects


# ---------------------------------------------------------------- the split

def _plan(config: TrainConfig, n_stages: int, device: str):
    """The memory planner's pipeline plan for this config (None when the planner does not know the model)."""
    from . import memory

    prec = PRECISION[config.precision]
    if not config.micro_batches:   # priced at the kit's count, never left to the planner to reject
        config = dataclasses.replace(config, micro_batches=microbatch.count_for(
            config.batch_size, n_stages, config.schedule, device, config.precision))
    try:
        return memory.plan(model=_config_source(config.model), bits=prec.planner_bits, rank=config.lora.rank,
                           targets=config.lora.targets, seq_len=config.max_seq_len,
                           batch=max(config.batch_size, config.micro_batches), gpus=n_stages,
                           parallel="pipeline", micro_batches=min(config.micro_batches, config.batch_size),
                           schedule=config.schedule, device=device, balance=config.pipeline_split,
                           label_only_logits=config.label_only_logits, **prec.planner_kwargs)
    except (ConfigError, KeyError, ValueError):
        return None


def stage_split(config: TrainConfig, n_stages: int, n_layers: int | None = None, device: str = "cpu") -> list[int]:
    """Decoder layers per stage: balanced by the memory planner (embeddings count on the first stage,
    norm + head + logits on the last), or the same number per stage with config.pipeline_split='even'
    (and when the planner does not know the model)."""
    from . import memory

    if n_layers is None:
        from .lora import model_config, n_layers as count

        n_layers = count(model_config(_config_source(config.model)))
    if n_stages > n_layers:
        raise ConfigError(f"nproc={n_stages}: expected at most {n_layers} pipeline stages (one decoder layer "
                          f"each at least) for model={config.model!r}")
    plan = _plan(config, n_stages, device)
    split = plan.layers_per_device if plan is not None else memory.pipeline_split(n_layers, n_stages)
    if sum(split) != n_layers or len(split) != n_stages:  # the planner read a different config than the model's
        split = memory.pipeline_split(n_layers, n_stages)
    return list(split)


def stage_peak(config: TrainConfig, n_stages: int, device: str = "cpu") -> int | None:
    """The planner's peak bytes of the most loaded stage at the config's longest length (None: model unknown)."""
    plan = _plan(config, n_stages, device)
    return None if plan is None else plan.total_bytes


def _config_source(model: str):
    """What lora.model_config understands for this model name (a local dir for the kit's own models)."""
    from . import models

    if model in (models.EMBEDDED, models.TINY):
        return models.resolve_model_path(model)
    return model


def bounds(split: list[int], stage: int) -> tuple[int, int]:
    """[lo, hi) decoder-layer indices of `stage`."""
    lo = sum(split[:stage])
    return lo, lo + split[stage]


# ---------------------------------------------------------------- one stage

def decoder(causal_lm) -> nn.Module:
    """The decoder stack (embed_tokens, layers, norm, rotary_emb) of a Llama-style *ForCausalLM."""
    inner = getattr(causal_lm, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
        raise ConfigError(f"model={type(causal_lm).__name__}: pipeline parallelism supports Llama-style decoders "
                          "(model.embed_tokens / model.layers / model.norm: Llama, Mistral, Qwen2, SmolLM2)")
    return inner


def stage_parameters(split: list[int], stage: int):
    """keep(name) for load_partial: the parameters of `stage` in a Llama-style *ForCausalLM (the layout
    `decoder` checks): embeddings with the first stage, final norm + lm_head with the last."""
    lo, hi = bounds(split, stage)
    prefixes = tuple(f"model.layers.{i}." for i in range(lo, hi))
    if stage == 0:
        prefixes += ("model.embed_tokens.",)
    if stage == len(split) - 1:
        prefixes += ("model.norm.", "lm_head.")
    return lambda name: name.startswith(prefixes)


def load_stage(config: TrainConfig, stage: int, split: list[int], device: str = "cpu"):
    """(peft_model, tokenizer): the base model with only `stage`'s weights materialized and quantized (the
    rest on the meta device, cut away by build_stage), with the adapter the whole model would get."""
    from .stage_weights import load_partial

    torch.manual_seed(config.seed)
    model, tok = load_partial(config.model, config.precision, stage_parameters(split, stage), config.double_quant,
                              device=device)
    return with_adapter(config, model), tok


def stage_layers(config: TrainConfig, stage: int, n_stages: int, device: str = "cpu") -> list[int]:
    """[lo, hi) decoder layers of `stage` in this config's split."""
    return list(bounds(stage_split(config, n_stages, device=device), stage))


class StageModule(nn.Module):
    """Layers [lo, hi) of the decoder; the first stage embeds token ids, the last applies the final norm.

    forward(token ids on the first stage, hidden states after) -> hidden states; the last stage's are
    normed, and the loss function applies lm_head at label positions only. The decoder's own forward
    runs (causal mask, rotary embeddings), so this works for any Llama-style model. No attention mask
    travels between stages: batches are right-padded (tokenization.collate), and causal attention never
    lets a labelled position see the padding to its right (train.loss_fn drops the mask for the same reason).
    `layout` (P, B, S), set by StageRunner for a packed step: every chunk is one shared-prefix sequence, so
    the positions restart after the prefix and attention takes the layout's function.
    """

    def __init__(self, causal_lm, lo: int, hi: int, first: bool, last: bool):
        super().__init__()
        inner = decoder(causal_lm)
        inner.layers = nn.ModuleList(list(inner.layers)[lo:hi])  # the others are freed with the old list
        if not first:
            inner.embed_tokens = None
        if not last:
            inner.norm = nn.Identity()
        self.inner, self.first, self.last = inner, first, last
        self.layout: tuple[int, int, int] | None = None
        self.lm_head = causal_lm.get_output_embeddings() if last else None
        if not last:
            causal_lm.lm_head = None  # tied or not, the head lives on the last stage only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = {"input_ids": x} if self.first else {"inputs_embeds": x}
        if self.layout is not None:
            inputs.update(position_ids=shared_prefix.positions(*self.layout)[None].to(x.device),
                          **{shared_prefix.LAYOUT: self.layout})
        return self.inner(use_cache=False, **inputs).last_hidden_state


def build_stage(peft_model, stage: int, split: list[int]) -> tuple[StageModule, dict]:
    """Cut `peft_model` down to `stage`; returns the stage module and {parameter: original name} of its
    trainable (LoRA) parameters, names as in the unsplit model's state_dict (for reassembly)."""
    names = {p: n for n, p in peft_model.named_parameters() if p.requires_grad}
    lo, hi = bounds(split, stage)
    module = StageModule(peft_model.get_base_model(), lo, hi, stage == 0, stage == len(split) - 1)
    kept = {p: names[p] for p in module.parameters() if p in names}
    return module, kept


def pad_to(batch: dict, length: int, pad_id: int) -> dict:
    """Right-pad input_ids / attention_mask / labels to `length` (extra positions carry no loss)."""
    if not bool((batch["attention_mask"][:, :-1] >= batch["attention_mask"][:, 1:]).all()):
        raise ValueError("pipeline stages pass no attention mask: expected right-padded batches (collate)")
    extra = length - batch["input_ids"].shape[1]
    if extra <= 0:
        return batch
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE}
    return {k: nn.functional.pad(v, (0, extra), value=fill[k]) if k in fill else v for k, v in batch.items()}


def bucket(length: int, max_len: int) -> int:
    """`length` rounded up to PAD_MULTIPLE, never past max_len (or past length itself if that is longer)."""
    return padded_length(length, max_len, PAD_MULTIPLE)


def micro_batch(rows: list[dict], chunks: int, pad_id: int, max_len: int, pack: bool) -> dict:
    """One (accumulation) micro-batch as the schedule splits it into `chunks`: input_ids (dim 0 split into the
    chunks), targets [chunks, 2, K] (per chunk the flat hidden positions whose next token carries a label and
    those labels, IGNORE-padded: one form for both layouts) and layout (P, B, S) or None. With `pack`, where
    the micro-batch's rows share a prefix and a chunk holds >= 2 of them, each chunk is one packed sequence in
    the layout of the whole micro-batch, its own tokens padded as the single process pads them (to a multiple
    of 8: a coarser bucket is paid once per example of a chunk; measured, embedded nf4, chunks of 4, 16 vs 8:
    4.14 vs 3.37 s per step); otherwise the rows right-padded to bucket(longest)."""
    b = len(rows) // chunks
    shape = _chunk_layout(rows, chunks, max_len, pack)
    if shape is not None:
        parts = [shared_prefix.pack(rows[i * b:(i + 1) * b], pad_id, max_len, shape) for i in range(chunks)]
        return dict(input_ids=torch.cat([x["input_ids"] for x in parts]),
                    targets=_stack_targets([(x["gather"], x["targets"]) for x in parts]),
                    layout=(shape[0], b, shape[1]))
    batch = collate(rows, pad_id)
    batch = pad_to(batch, bucket(batch["input_ids"].shape[1], max_len), pad_id)
    nxt = torch.full_like(batch["labels"], IGNORE)
    nxt[:, :-1] = batch["labels"][:, 1:]   # the hidden state at t predicts token t + 1
    flat = [c.flatten() for c in nxt.split(b)]
    where = [(c != IGNORE).nonzero().squeeze(1) for c in flat]
    return dict(input_ids=batch["input_ids"], targets=_stack_targets([(w, c[w]) for w, c in zip(where, flat)]),
                layout=None)


def _chunk_layout(rows: list[dict], chunks: int, max_len: int, pack: bool) -> tuple[int, int] | None:
    """(P, S) every chunk of the micro-batch is packed in, or None: padded chunks (no `pack`, no shared
    prefix, or chunks of one example, which share nothing)."""
    return shared_prefix.layout_of(rows, max_len) if pack and len(rows) // chunks >= 2 else None


def _stack_targets(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    k = max(1, max(len(g) for g, _ in parts))
    out = torch.full((len(parts), 2, k), IGNORE, dtype=torch.long)
    out[:, 0] = 0
    for i, (g, t) in enumerate(parts):
        out[i, 0, :len(g)], out[i, 1, :len(t)] = g, t
    return out


def micro_batch_shape(rows: list[dict], chunks: int, max_len: int, pack: bool) -> tuple[int, int]:
    """(padded length per example, shared prefix tokens) of micro_batch's layout, without building it."""
    shape = _chunk_layout(rows, chunks, max_len, pack)
    if shape is not None:
        return shape[0] + shape[1], shape[0]
    return bucket(max(len(r["input_ids"]) for r in rows), max_len), 0


# ---------------------------------------------------------------- reassembly

def gather_adapter(stage_params: dict, dst: int = 0) -> dict | None:
    """Every stage's LoRA tensors (CPU copies keyed by original name) collected on rank `dst`."""
    mine = {name: p.detach().to("cpu", copy=True) for p, name in stage_params.items()}
    if not dist.is_initialized():
        return mine
    parts = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(mine, parts, dst=dst)
    if dist.get_rank() != dst:
        return None
    full = {}
    for part in parts:
        full.update(part)
    return full


def save_adapter(peft_model, state_dict: dict, path) -> None:
    """A standard PEFT adapter (adapter_config.json + adapter_model.safetensors) from the gathered tensors.

    peft's save_pretrained picks the adapter's tensors by walking the model's LoRA modules, and a stage
    holds only its own; so it walks an unsplit skeleton of the same architecture on the meta device
    (no memory), wrapped with this adapter's config, and takes the tensors from `state_dict`.
    """
    import copy

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(peft_model.get_base_model().config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config   # the skeleton only needs the module names
    peft_cfg = peft_model.peft_config["default"]
    with torch.device("meta"):
        skeleton = get_peft_model(AutoModelForCausalLM.from_config(cfg), copy.deepcopy(peft_cfg))
    skeleton.peft_config["default"] = peft_cfg   # keeps base_model_name_or_path of the real base model
    missing = sorted(n for n, p in skeleton.named_parameters() if p.requires_grad and n not in state_dict)
    if missing:
        raise RuntimeError(f"adapter reassembly: no stage sent {missing[0]} ({len(missing)} tensors missing)")
    skeleton.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True, save_embedding_layers=False)


# ---------------------------------------------------------------- the schedule

class StageRunner:
    """This rank's stage under GPipe / 1F1B: one PipelineStage + schedule per (chunks, batch, length) shape."""

    def __init__(self, module: StageModule, rank: int, world: int, device, schedule: str, amp=None,
                 checkpointing: bool = False):
        self.module, self.rank, self.world, self.device = module, rank, world, device
        self.schedule, self.amp, self.checkpointing = schedule, amp, checkpointing
        self.cache: dict = {}
        self.n_targets = 1      # target tokens of the whole optimizer step: the loss normaliser
        self.losses: list = []  # last stage: per-chunk losses of the current step
        # (input dtype, input requires_grad, output dtype, output requires_grad) of a chunk, seen on the stage's
        # first forward. A PipelineStage given no example tensors infers them by running a real forward and
        # backward of one chunk (torch 2.13), once per stage object, so once per new shape; with these the later
        # shapes are static.
        self.metas: tuple | None = None
        self._watch = module.register_forward_hook(self._observe)

    def _observe(self, module, args, out) -> None:
        if not torch.is_grad_enabled():   # a no-grad call (a check by hand) shows no gradient to send back
            return
        self.metas = (args[0].dtype, args[0].requires_grad, out.dtype, out.requires_grad)
        self._watch.remove()

    def _examples(self, chunks: int, shape: tuple) -> dict:
        """PipelineStage's input_args / output_args for one chunk of a micro-batch of `shape` (meta tensors:
        shapes and dtypes only), or {} before the first forward has shown the dtypes."""
        if self.metas is None:
            return {}
        x_dtype, x_grad, y_dtype, y_grad = self.metas
        rows, length, hidden = shape[0] // chunks, shape[1], self.module.inner.config.hidden_size
        x = torch.empty((rows, length) if self.module.first else (rows, length, hidden), dtype=x_dtype, device="meta")
        y = torch.empty((rows, length, hidden), dtype=y_dtype, device="meta")
        return dict(input_args=x.requires_grad_(x_grad), output_args=y.requires_grad_(y_grad))

    def _loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Label-only logits as train.loss_fn: lm_head only where the next token carries a label
        # (targets: this chunk's [1, 2, K] of micro_batch).
        gather, labels = targets[0]
        keep = labels != IGNORE
        logits = self.module.lm_head(hidden.flatten(0, 1)[gather[keep]])
        return nn.functional.cross_entropy(logits.float(), labels[keep], reduction="sum") / self.n_targets

    def _schedule(self, chunks: int, shape: tuple):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        key = (chunks, *shape)
        if key not in self.cache:
            stage = PipelineStage(self.module, self.rank, self.world, self.device, **self._examples(chunks, shape))
            # 1F1B needs at least one chunk per stage; a smaller (last) batch runs GPipe, same numbers
            cls = Schedule1F1B if self.schedule == "1f1b" and chunks >= self.world else ScheduleGPipe
            # scale_grads=False: _loss already divides by the step's target tokens, like train_step
            self.cache[key] = cls(stage, n_microbatches=chunks, loss_fn=self._loss, scale_grads=False)
        return self.cache[key]

    def run(self, batch: dict, chunks: int) -> None:
        """Forward + backward of one (accumulation) batch (micro_batch) through the pipeline, split into `chunks`."""
        ids, layout = batch["input_ids"].to(self.device), batch["layout"]
        sched = self._schedule(chunks, tuple(ids.shape))
        per_example = layout[0] + layout[2] if layout else ids.shape[1]
        packed = shared_prefix.attention(self.module.inner) if layout else contextlib.nullcontext()
        self.module.layout = layout
        # the single process's attention kernel per length (train.attention_kernel): step runs forward and backward
        try:
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None), \
                    attention_kernel(per_example, self.device, self.checkpointing), packed:
                if self.rank == 0:
                    sched.step(ids)
                elif self.rank == self.world - 1:
                    sched.step(target=batch["targets"].to(self.device), losses=self.losses)
                else:
                    sched.step()
        finally:
            self.module.layout = None


def chunks_for(batch_len: int, micro_batches: int) -> int:
    """Most pipeline micro-batches <= micro_batches that split the batch evenly (a stage's shapes are
    fixed per schedule, so every chunk must have the same size)."""
    return max(d for d in range(1, min(batch_len, micro_batches) + 1) if batch_len % d == 0)


def clip_global_grad_norm(params: list, max_norm: float) -> float:
    """clip_grad_norm_ over the whole model when each rank holds one stage's parameters."""
    grads = [p.grad for p in params if p.grad is not None]
    local = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=params[0].device)
    sq = (local.double() ** 2).reshape(1)
    if dist.is_initialized():
        dist.all_reduce(sq)
    total = sq.sqrt().reshape(()).to(local.dtype)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def _from_last_stage(x: float, world: int, device) -> float:
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.broadcast(t, src=world - 1)
    return float(t.item())


# ---------------------------------------------------------------- the run

def check_pipeline_config(config: TrainConfig, world: int) -> None:
    if world < 2:
        raise ConfigError(f"nproc={world}: expected >= 2 stages for parallel='pipeline' (use parallel='none')")
    if config.micro_batches == 0:   # the kit chooses (sized); this raises when there is nothing to choose from
        microbatch.choose(config.batch_size, world, config.schedule)
        return
    if config.batch_size % config.micro_batches:
        raise ConfigError(f"micro_batches={config.micro_batches}: expected a divisor of batch_size="
                          f"{config.batch_size} (every pipeline micro-batch has the same shape)")
    if config.schedule == "1f1b" and config.micro_batches < world:
        raise ConfigError(f"micro_batches={config.micro_batches}: expected >= nproc ({world}) for schedule='1f1b'")


def sized(config: TrainConfig, world: int, device) -> tuple[TrainConfig, dict | None]:
    """(config with its micro-batch count, how it was chosen): micro_batches=0 leaves the count to
    finlora_utils.microbatch (predicted efficiency among the counts whose planned peak fits the device); any
    other count is the config's own (None). In a distributed run rank 0 decides and the others take its answer
    (nodes may differ in memory or in bf16 support), so every rank must call it."""
    if config.micro_batches:
        return config, None
    check_pipeline_config(config, world)
    dev = torch.device(device)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        answer = [None]
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))   # the ranks that share this machine's memory
        total = (torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda"
                 else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(local, 1))

        def fits(m: int) -> bool:
            peak = stage_peak(dataclasses.replace(config, micro_batches=m), world, dev.type)
            return peak is None or peak <= total

        choice = microbatch.choose(config.batch_size, world, config.schedule, dev.type, fits,
                                   microbatch.compute_for(config.precision))
        answer = [choice.as_dict()]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(answer, src=0)
    return dataclasses.replace(config, micro_batches=answer[0]["micro_batches"]), answer[0]


def train_pipeline(config: TrainConfig, rank: int, world: int, device, preset: str | None = None,
                   results_dir=None, force: bool = False, data_dir=None, log=print, on_step=None,
                   resolved: tuple[TrainConfig, dict | None] | None = None) -> dict:
    """Pipeline-parallel training: engine.run with this rank's stage as the recipe (same data plan,
    optimizer, checkpoints and results schema as train.train). Every rank calls it; rank 0 returns the
    results dict (with '_path'), the others {}. on_step(step, loss) runs on every rank after every step.
    micro_batches=0: the kit chooses the count (`sized`, or `resolved`, its answer computed before). The run's
    config keeps the 0 it was asked for, so a finished or interrupted run is found again wherever the count
    would come out otherwise; train_info.parallel records the count it trained with and how it was chosen."""
    sized_config, choice = resolved or sized(config, world, device)
    return run(config, Stage(rank, world, device, sized_config.micro_batches, choice), preset=preset,
               results_dir=results_dir, data_dir=data_dir, force=force, log=log, on_step=on_step)


class Stage:
    """The engine's recipe for one pipeline stage per rank: this rank loads, quantizes and trains its own
    layers only; the schedule passes activations between ranks; rank 0 saves the gathered adapter."""

    label = "pipeline"
    writes_checkpoints = True   # every stage writes its own part (its LoRA tensors and optimizer state)

    def __init__(self, rank: int, world_size: int, device, micro_batches: int | None = None,
                 micro_batch_choice: dict | None = None):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.micro_batches = micro_batches             # the count a config asking for 0 trains with
        self.micro_batch_choice = micro_batch_choice   # microbatch.Choice.as_dict() when the kit chose the count

    def check(self, config: TrainConfig) -> None:
        check_pipeline_config(config, self.world_size)

    def checkpoint_root(self, run_dir: Path) -> Path:
        return run_dir / f"stage-{self.rank}-of-{self.world_size}"

    def discard(self, root: Path) -> None:
        if dist.is_initialized():
            dist.barrier()   # at the end: not before rank 0 has written the results that supersede them
        shutil.rmtree(root, ignore_errors=True)

    def build(self, config: TrainConfig, data) -> Built:
        if not config.micro_batches:   # the kit's count (train_pipeline), or its choice when built by hand
            config = dataclasses.replace(config, micro_batches=self.micro_batches
                                         or sized(config, self.world_size, self.device)[0].micro_batches)
        self.config, self.examples = config, data.examples
        self.split = stage_split(config, self.world_size, device=self.device.type)
        peft_model, self.tok = load_stage(config, self.rank, self.split, str(self.device))
        seq_len, label_tokens = longest(data.examples)
        ckpt_on, why = decide_grad_checkpointing(   # the whole model's plan: conservative for one stage
            config, peft_model, seq_len, config.batch_size // config.micro_batches, label_tokens, self.device)
        set_grad_checkpointing(peft_model, ckpt_on)
        self.pack, self.pack_why = decide_share_prefix(config, peft_model, ckpt_on, seq_len)
        if self.pack and config.batch_size // config.micro_batches < 2:
            self.pack, self.pack_why = False, "pipeline micro-batches of one example share nothing"
        shapes = [micro_batch_shape([data.examples[i] for i in mb], chunks_for(len(mb), config.micro_batches),
                                    config.max_seq_len, self.pack) for st in data.plan for mb in st]
        mem_plan = memory_plan(config, peft_model, [n for n, _ in shapes], config.batch_size, label_tokens,
                               self.device, ckpt_on, self.world_size, prefixes=[p for _, p in shapes])
        module, self.names = build_stage(peft_model, self.rank, self.split)
        peft_model.train()
        amp = amp_dtype(config.precision, self.device)
        amp = None if amp == torch.float16 else amp   # fp16 needs a GradScaler across stages: not supported, run fp32
        self.model, self.params = peft_model, list(self.names)
        self.runner = StageRunner(module, self.rank, self.world_size, self.device, config.schedule, amp, ckpt_on)
        return Built(peft_model, self.params, self.device, amp, None, ckpt_on, why, mem_plan)

    def agree(self, state, root: Path):
        """All stages resume from the same step with the same split, or none does."""
        mine = (state or {}).get("step", 0), (state or {}).get("split", self.split)
        every = [None] * self.world_size
        dist.all_gather_object(every, mine)
        if any(s != self.split for _, s in every):
            raise ConfigError(f"nproc={self.world_size}: the checkpoint in {root.parent} was made with stages "
                              f"{next(s for _, s in every if s != self.split)}, this run splits {self.split}; "
                              f"expected the same nproc, or {FORCE_HINT} to start over")
        if len({st for st, _ in every}) > 1:
            raise RuntimeError(f"{root.parent}: stage checkpoints disagree (steps {[st for st, _ in every]}), a "
                               f"run died while saving; expected {FORCE_HINT} to start over")
        # checkpoints written before pipeline chunks could pack have no such key: they padded
        if state is not None and bool(state.get("share_prefix", False)) != self.pack:
            made, now = ("packed", "pads") if state.get("share_prefix") else ("padded", "packs")
            raise ConfigError(f"share_prefix={self.config.share_prefix!r}: the checkpoint in {root.parent} was made "
                              f"with {made} chunks and this run {now} them ({self.pack_why}); expected the same "
                              "layout, or force=True to start over")
        return state

    def fresh(self) -> dict:
        return dict(split=self.split, share_prefix=self.pack)

    def describe(self) -> str:
        c = self.config
        packing = ", shared prefix once per chunk" if self.pack else f", padded chunks ({self.pack_why})"
        return f", {self.world_size} stages {self.split}, {c.schedule}, {c.micro_batches} micro-batches{packing}"

    def step(self, step: list[list[int]], counts: dict, optimizer, scheduler) -> float:
        c, pad = self.config, self.tok.pad_token_id
        self.runner.n_targets, self.runner.losses = max(counts["target_tokens"], 1), []
        for mb in step:
            chunks = chunks_for(len(mb), c.micro_batches)
            self.runner.run(micro_batch([self.examples[i] for i in mb], chunks, pad, c.max_seq_len, self.pack), chunks)
        clip_global_grad_norm(self.params, MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return _from_last_stage(float(sum(x.item() for x in self.runner.losses)), self.world_size, self.device)

    def adapter(self):
        self.full = gather_adapter(self.names)
        return _Gathered(self.model, self.full) if self.full is not None else None

    def trainable(self) -> int:
        return sum(t.numel() for t in self.full.values())

    def info(self) -> dict:
        c = self.config
        return dict(label_only_logits=True, parallel=dict(mode="pipeline", world_size=self.world_size,
                                                          schedule=c.schedule, micro_batches=c.micro_batches,
                                                          micro_batch_choice=self.micro_batch_choice,
                                                          split=self.split),
                    share_prefix=self.pack, share_prefix_reason=self.pack_why)


class _Gathered:
    """Stands in for the PEFT model in artifacts.save_adapter: saves the gathered (all-stage) LoRA tensors."""

    def __init__(self, peft_model, state_dict: dict):
        self.peft_model, self.state_dict = peft_model, state_dict

    @property
    def peft_config(self):   # artifacts.save_adapter names the base in it; the skeleton saves that config
        return self.peft_model.peft_config

    def save_pretrained(self, path, **kw):
        save_adapter(self.peft_model, self.state_dict, path)
