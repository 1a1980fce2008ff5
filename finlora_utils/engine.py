"""The life of one training run, once for every way of computing a step.

    result = engine.run(config, recipe, preset="cpu")

open    finished-run check, data (errors before any model loads), the recipe builds its model, optimizer,
        resume from the latest checkpoint (same config, else an error naming the first difference)
record  each step: the recipe computes it; counters, wall/CPU time, loss curve, checkpoint, log line,
        then `on_step(step, loss)` — the one per-step hook (progress bars, live loss curves, failure drills)
finish  peak memory of the training loop (measured here: memory.measure_peak resets the high-water mark
        as the loop starts; parallel's per-rank stats read that same mark afterwards), train_info, the
        adapter, the results file, checkpoints dropped

A recipe says how a step is computed and where its model lives: `train.Replica` (one process, or a DDP
replica per rank) and `pipeline.Stage` (one pipeline stage per rank). Its interface, as torchtune's recipes:

    label                      log prefix ("train", "pipeline")
    rank, world_size           this process in the job; rank 0 logs and writes the results
    check(config)              recipe-specific validation, before anything loads
    checkpoint_root(run_dir)   where this rank's checkpoints live; writes_checkpoints: does this rank save
    discard(root)              drop this rank's checkpoints (force=True, or after the results are written)
    build(config, data)        -> Built: model, trainable params, device, autocast dtype, grad scaler,
                               checkpointing decision
    agree(state, root)         every rank resumes from the same step (collective); returns state
    fresh()                    extra keys of a new run's state (the pipeline split)
    describe()                 what the start line adds
    step(step, counts, optimizer, scheduler) -> the step's mean loss per target token, on every rank
    adapter()                  -> what artifacts.save_adapter saves (collective for the pipeline), or None
                               on ranks that write nothing; trainable(): its tensors' element count
    info()                     extra train_info fields
"""
from __future__ import annotations

import difflib

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import dropout, memory, results
from .artifacts import (CKPT_DIR, TASK_FILE, as_stored, differences, finished_result, load_checkpoint, model_card,
                        save_adapter, save_checkpoint, task_record)
from .config import FORCE_HINT, VARIANT_HINT, ConfigError, TrainConfig
from .tokenization import IGNORE, batch_plan, encode_dataset


# ---------------------------------------------------------------- open: data and optimizer

@dataclass
class TrainData:
    examples: list[dict]          # input_ids, labels, task, truncated
    plan: list[list[list[int]]]   # steps -> micro-batches -> example indices (global, before sharding)
    truncated: dict[str, int]     # per task
    source: str                   # real | sample | file | mixed
    files: list[dict] | None = None   # provenance of the own-data (file) tasks: paths, sha256, label set


def check_tasks(config: TrainConfig) -> None:
    """Every task the config names exists (ConfigError otherwise); own data (train_file) is registered, its file
    checked by the validator (FILE:LINE errors). Cheap: a launcher runs it before starting any process."""
    from . import data

    data.register_config(config)
    for t in config.tasks:
        if t not in data.TASKS and not data.is_file_task(t):
            known = data.task_names(include_variants=True)
            close = difflib.get_close_matches(t, known, n=1)
            raise ConfigError(f"tasks={t!r}: unknown task{f' (did you mean {close[0]!r}?)' if close else ''}; "
                              f"expected one of {', '.join(known)}, or your own data with train_file")


def build_data(config: TrainConfig, tok, data_dir=None) -> TrainData:
    """Load the train split(s), tokenize with masking/truncation, and plan the batches.

    Fails (ConfigError) on an unknown task or a max_seq_len too small for a prompt, before any model loads.
    """
    from . import data

    check_tasks(config)
    ds = data.load_tasks(list(config.tasks), config.train_split, data_dir, config.max_train_samples or None,
                         config.seed)
    examples, truncated = encode_dataset(ds, tok, config.max_seq_len, config.truncation)
    lengths = [len(e["input_ids"]) for e in examples]
    plan = batch_plan(lengths, config.batch_size, config.grad_accum, config.epochs, config.max_steps, config.seed)
    return TrainData(examples, plan, truncated, data.source_of(ds), data.provenance(config.tasks) or None)


def longest(examples: list[dict]) -> tuple[int, int]:
    """(tokens, target tokens) of the longest example: the batch shape a memory plan must fit."""
    return (max(len(e["input_ids"]) for e in examples),
            max(len(e["labels"]) - e["labels"].count(IGNORE) for e in examples))


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


@dataclass
class Built:
    """What a recipe's build() hands the engine."""
    model: torch.nn.Module        # the peft model whose LoRA tensors a checkpoint holds
    params: list                  # this rank's trainable parameters (the optimizer's)
    device: torch.device
    amp: torch.dtype | None       # autocast dtype, None = fp32
    scaler: object | None         # a GradScaler for fp16 autocast
    grad_checkpointing: bool
    why: str                      # how the checkpointing decision was made
    memory_plan: dict | None = None   # the planner's training-phase peak at the run's costliest batch shape


def step_counts(examples: list[dict], step: list[list[int]]) -> dict:
    """Counters of one global step (all micro-batches, all ranks)."""
    lens = [[len(examples[i]["input_ids"]) for i in mb] for mb in step]
    labelled = [len(examples[i]["labels"]) - examples[i]["labels"].count(IGNORE) for mb in step for i in mb]
    return dict(examples=sum(map(len, lens)), tokens=sum(len(x) * max(x) for x in lens),
                nonpad_tokens=sum(map(sum, lens)), target_tokens=sum(labelled))


# ---------------------------------------------------------------- the run

def run(config: TrainConfig, recipe, preset: str | None = None, results_dir: str | Path | None = None,
        data_dir=None, force: bool = False, log=print, on_step=None) -> dict:
    """Train one adapter with `recipe`; rank 0 returns the results dict (with '_path'), other ranks {}.

    A finished run is returned as is unless force=True; an unfinished one resumes from its latest checkpoint.
    """
    from .models import load_tokenizer

    config.validate()
    recipe.check(config)
    rank = recipe.rank
    say = log if rank == 0 else _quiet
    tag = f"[{recipe.label} {config.run_id()}]"
    run_dir = Path(config.output_dir) / config.run_id()
    results_path = Path(results_dir or results_default_dir()) / f"{config.run_id()}.json"
    done = None if force else finished_result(config, results_path, run_dir)
    if done is not None:
        changed = data_changed(config, done, data_dir)
        if changed:
            raise ConfigError(f"{changed}: the data changed since {results_path} was trained on it; expected "
                              f"{FORCE_HINT} to retrain on the data as it is now, or {VARIANT_HINT} for a new run id")
        say(f"{tag} finished earlier: {results_path} (to retrain: {FORCE_HINT})")
        return dict(done, _path=str(results_path)) if rank == 0 else {}
    memory.set_heap_mode(config.cpu_memory)   # before data and model: see memory.pin_mmap_threshold
    data = build_data(config, load_tokenizer(config.model), data_dir)   # data errors before the model loads
    root = recipe.checkpoint_root(run_dir)
    if force:
        recipe.discard(root)
    built = recipe.build(config, data)
    optimizer, scheduler = make_optimizer(config, built.params, len(data.plan))
    state = recipe.agree(None if force else load_checkpoint(root, built.model, optimizer, scheduler, built.scaler),
                         root)
    if state is not None:
        diff = differences(state["config"], as_stored(config))
        if diff:
            raise ConfigError(f"{diff[0]}={getattr(config, diff[0], None)!r}: the checkpoint in {root} was made "
                              f"with {diff[0]}={state['config'].get(diff[0])!r}; expected {FORCE_HINT} to start over")
        say(f"{tag} resuming from step {state['step']}/{len(state['plan'])}")
    # the code this run computes with: read now, not when the results are written (a commit made while it trains
    # is not its code); a resumed run keeps the commit its first segment started at when they differ
    commit = results.git_commit()
    state = state or dict(step=0, plan=data.plan, loss_curve=[], git_commit=commit, **recipe.fresh(),
                          stats=dict(examples=0, tokens=0, nonpad_tokens=0, target_tokens=0, wall_s=0.0, cpu_s=0.0))
    plan, stats, curve, start = state["plan"], state["stats"], state["loss_curve"], state["step"]
    ex = data.examples
    amp_name = str(built.amp).replace("torch.", "") if built.amp else None
    from .data import describe_source   # the data layer loads lazily, as in build_data

    say(f"{tag} {len(ex)} examples of {describe_source(data.source)}, {len(plan)} steps, {config.precision}, "
        f"amp {amp_name}, grad checkpointing {'on' if built.grad_checkpointing else 'off'} ({built.why}), "
        f"{built.device}{recipe.describe()}, truncated {data.truncated}")
    if hasattr(on_step, "begin"):   # a progress bar / live loss curve hears the plan's size first
        on_step.begin(len(plan), start)

    def loop():
        t_start = t_mark = time.time()
        c_mark = time.process_time()   # CPU seconds of all threads: with wall_s, shows a contended machine
        session_tokens = 0
        for step in range(start, len(plan)):
            counts = step_counts(ex, plan[step])
            loss = recipe.step(plan[step], counts, optimizer, scheduler)
            curve.append([step + 1, round(loss, 6)])
            for k, v in counts.items():
                stats[k] += v
            session_tokens += counts["nonpad_tokens"]
            now, cpu_now = time.time(), time.process_time()
            if step == start:   # a fresh process's first step also faults in its memory and builds kernels
                stats["first_step"] = dict(step=step + 1, wall_s=now - t_mark, **counts)
            stats["wall_s"] += now - t_mark
            stats["cpu_s"] = stats.get("cpu_s", 0.0) + cpu_now - c_mark
            t_mark, c_mark = now, cpu_now
            if recipe.writes_checkpoints and config.save_every and (step + 1) % config.save_every == 0 \
                    and step + 1 < len(plan):
                save_checkpoint(root, built.model, optimizer, scheduler, built.scaler, dict(
                    {k: v for k, v in state.items() if k not in ("step", "config")},
                    step=step + 1, config=as_stored(config)))
            if (step + 1) % config.log_every == 0 or step + 1 == len(plan):
                el = now - t_start
                say(f"{tag} step {step + 1}/{len(plan)}  loss {loss:.4f}  {session_tokens / el:.0f} tok/s"
                    f"  {el:.0f}s elapsed  eta {el / (step + 1 - start) * (len(plan) - step - 1):.0f}s")
            if on_step is not None:
                on_step(step + 1, loss)

    # the training phase's peak, the run's one measurement
    _, peaks = memory.measure_training_peak(loop, exact=config.cpu_memory == "exact")
    memory.set_heap_mode("fast")   # the exact heap is for the measured loop: what follows here runs at full speed
    adapter = recipe.adapter()
    res = None
    if rank == 0:
        wall = max(stats["wall_s"], 1e-9)
        info = dict(stats, steps=len(plan), tokens_per_s=stats["nonpad_tokens"] / wall,
                    target_tokens_per_s=stats["target_tokens"] / wall, **peaks, memory_plan=built.memory_plan,
                    loss_curve=curve, truncated=data.truncated, examples_per_task=count_tasks(ex),
                    grad_checkpointing=built.grad_checkpointing, grad_checkpointing_reason=built.why,
                    label_only_logits=config.label_only_logits, amp_dtype=amp_name, device=str(built.device),
                    lora_dropout_kernel=dropout.kernel(built.model),
                    world_size=recipe.world_size, trainable_params=recipe.trainable(),
                    resumed_from_step=start or None)
        if state.get("git_commit", commit) != commit:
            info["first_segment_git_commit"] = state["git_commit"]
        info.update(recipe.info())
        from .data.hashes import file_hashes
        from .models import base_provenance

        # own data: the task files (path, sha256, rows, labels); built-in tasks: every file read, by sha256
        provenance = dict(data_source=data.source, base_model=base_provenance(config.model),
                          data_files=data.files or file_hashes(config.tasks, config.train_split, data_dir))
        # an earlier run's results (a forced retrain) must never be read as this adapter's: a crash between the
        # two writes below then leaves no results, so the next call retrains instead of trusting a stale pair
        results_path.unlink(missing_ok=True)
        adapter_dir = run_dir / "adapter"
        base_id = base_model_id(config.model)
        info["adapter_bytes"] = save_adapter(adapter, adapter_dir, model_card(config, info, base_id), base_id,
                                             {TASK_FILE: json.dumps(task_record(config.tasks), indent=2) + "\n"})
        info["adapter_path"] = results.portable_path(adapter_dir)
        res = results.write_trained_run(results_path, config.run_id(), as_stored(config), config.seed, info,
                                        preset=preset, commit=commit, **provenance)
    recipe.discard(root)   # the adapter and results supersede the checkpoints
    if res is None:
        return {}
    say(f"{tag} done: {len(plan)} steps in {stats['wall_s']:.1f}s, final loss {curve[-1][1]:.4f}, "
        f"peak training memory {peaks['peak_mem_bytes'] / 2**30:.2f} GiB above the loaded process, "
        f"{peaks['process_peak_mem_bytes'] / 2**30:.2f} GiB whole process ({peaks['peak_mem_method']}), "
        f"results {results_path}")
    return dict(res, _path=str(results_path))


def data_changed(config: TrainConfig, done: dict, data_dir=None) -> str | None:
    """The first training file whose content differs from what the finished run `done` read (by its stored
    sha256; a real file that appeared or vanished since counts, as the loader would then read the other one),
    None when all match or the run predates the record. Own data: the train file as the config names it."""
    from . import data
    from .data.hashes import file_hashes

    stored = done.get("run_info", {}).get("data_files")
    if not stored:
        return None
    if isinstance(stored, list):   # own data: one provenance per file task, each with its files
        data.register_config(config)   # the validator's FILE:LINE errors come here, as in build_data
        changed = data.changed_files(stored, config.tasks)
        return f"{changed[0]['split']}_file={changed[0]['path']!r}" if changed else None
    now = file_hashes(config.tasks, config.train_split, data_dir)
    for key, sha in stored.items():
        if key in now and now[key] != sha:
            return f"{key} in {'FINLORA_DATA_DIR' if not key.startswith('sample-') else 'the sample set'}"
    return None


def base_model_id(name: str) -> str:
    from .models import EMBEDDED, EMBEDDED_HUB_ID, resolve_model_path

    return EMBEDDED_HUB_ID if name == EMBEDDED else resolve_model_path(name)


def results_default_dir() -> Path:
    from .paths import reports_dir

    return reports_dir() / "results"


def count_tasks(examples: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in examples:
        out[e["task"]] = out.get(e["task"], 0) + 1
    return out


def drop_checkpoints(root: Path) -> None:
    shutil.rmtree(Path(root) / CKPT_DIR, ignore_errors=True)


def _quiet(*_args, **_kw) -> None:
    pass
