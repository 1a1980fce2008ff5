"""What a training run leaves on disk: checkpoints to resume from, the adapter with its model card,
and the check that a run already finished.

Checkpoints: adapter, optimizer and RNG as safetensors; scheduler, progress and data order as JSON.
Each is written to a temporary folder, renamed into place, and only then does the `latest` pointer
move (atomically): a run killed at any moment, SIGKILL included, resumes from the previous complete
checkpoint and loses at most the steps since. Nothing here unpickles: torch.load is never used.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from . import results
from .config import FORCE_HINT, VARIANT_HINT, ConfigError, TrainConfig

CKPT_DIR = "checkpoints"
ADAPTER_WEIGHTS = "adapter_model.safetensors"   # what save_pretrained writes and the only adapter weights loaded
# Beside the weights: the tasks the adapter was trained on, with the label set and instruction its prompts used, so
# an adapter folder or a model merged from it can be asked to label text without the kit's results or the data.
TASK_FILE = "finlora_task.json"
KEEP_CHECKPOINTS = 2   # the newest and the one before: a damaged newest one falls back to its predecessor
# Config fields that change nothing in the trained adapter: a resume or a finished run may differ in them.
COSMETIC = ("save_every", "log_every", "output_dir", "nproc", "parallel", "cpu_memory", "pipeline_split")


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be read; the message names each damaged file."""


def _flatten_optimizer(sd: dict) -> tuple[dict, dict]:
    """Optimizer state_dict -> (tensors for safetensors, everything else for JSON)."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_tensors() -> dict:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, scaler, state: dict) -> Path:
    """Save <run_dir>/checkpoints/step-N (model: the peft model; state: JSON-able progress, must hold 'step');
    older checkpoints are removed once the new one is complete."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:06d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()},
              tmp / "adapter.safetensors")
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    save_file(_rng_tensors(), tmp / "rng.safetensors")
    results.write_json(tmp / "state.json", dict(state, optimizer=opt_meta, scheduler=scheduler.state_dict(),
                                                scaler=scaler.state_dict() if scaler is not None else None))
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    results.atomic_write_text(root / "latest", name)
    for old in sorted(root.glob("step-*"), reverse=True)[KEEP_CHECKPOINTS:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read_checkpoint(d: Path, device: str) -> dict:
    """Every file of one checkpoint, read and parsed before anything is applied; CheckpointError names the
    first file that is missing, truncated or not what it should be."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out = {}
    f = d / "state.json"
    try:
        out["state"] = json.loads(f.read_text(encoding="utf-8"))
        missing = [k for k in ("step", "optimizer", "scheduler") if k not in out["state"]]
        if missing:
            raise KeyError(f"no {missing[0]!r}")
        for name, dev in (("adapter", device), ("optimizer", device), ("rng", "cpu")):
            f = d / f"{name}.safetensors"
            out[name] = load_file(f, device=dev)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise CheckpointError(f"{f}: unreadable ({type(e).__name__}: {e})") from None
    return out


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, scaler) -> dict | None:
    """Restore the latest checkpoint into model/optimizer/scheduler/scaler and the RNG; returns its state
    (step, plan, counters) or None when there is none."""
    from peft import set_peft_model_state_dict

    root = Path(run_dir) / CKPT_DIR
    if not (root / "latest").exists():
        return None
    latest = (root / "latest").read_text().strip()
    # newest first: the one `latest` names, then any older complete one (a disk that filled up, a copy cut short)
    candidates = [root / latest] + sorted((p for p in root.glob("step-*") if p.name != latest), reverse=True)
    device = str(next(p.device for p in model.parameters() if p.requires_grad))
    damaged = []
    for d in candidates:
        try:
            ck = _read_checkpoint(d, device)
            break
        except CheckpointError as e:
            damaged.append(str(e))
    else:
        raise CheckpointError(f"cannot resume from {root}: " + "; ".join(damaged)
                              + f". Delete {root} (or train with force=True) to start this run over")
    if damaged:
        warnings.warn(f"damaged checkpoint skipped ({'; '.join(damaged)}); resuming from {d}", stacklevel=2)
    state = ck["state"]
    res = set_peft_model_state_dict(model, ck["adapter"])
    if getattr(res, "unexpected_keys", None):
        raise CheckpointError(f"{d}: checkpoint does not match the adapter (unexpected {res.unexpected_keys[:3]})")
    optimizer.load_state_dict(_unflatten_optimizer(ck["optimizer"], state.pop("optimizer")))
    scheduler.load_state_dict(state.pop("scheduler"))
    scaler_state = state.pop("scaler")
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)
    rng = ck["rng"]
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return state


def exclusive_run(train_fn):
    """Decorate ``train(config, rank=0, ...)``: rank 0 holds ``<output_dir>/<run_id>/.lock`` while it trains, so
    a second process training the same run into the same folder stops at once with an error naming the first
    (instead of two processes interleaving checkpoints and adapter files)."""
    @functools.wraps(train_fn)
    def wrapper(config, *args, **kwargs):
        if kwargs.get("rank", args[0] if args else 0) != 0:
            return train_fn(config, *args, **kwargs)
        with results.folder_lock(Path(config.output_dir) / config.run_id(), f"training {config.run_id()}"):
            return train_fn(config, *args, **kwargs)
    return wrapper


# ---------------------------------------------------------------- finished runs, adapter, model card

# fields added to TrainConfig after runs were stored, with the value those runs had (where it is not the default)
BEFORE_FIELD = {"share_prefix": False}


def differences(a: dict, b: dict) -> list[str]:
    # a field added to TrainConfig after a run was stored counts as what the code of the day did
    d = {**as_stored(TrainConfig()), **BEFORE_FIELD}
    return sorted(k for k in set(a) | set(b) if k not in COSMETIC and a.get(k, d.get(k)) != b.get(k, d.get(k)))


def as_stored(config: TrainConfig) -> dict:
    return json.loads(json.dumps(config.to_dict(), default=list))


def finished_result(config: TrainConfig, results_path: Path, run_dir: Path) -> dict | None:
    """The results of an earlier finished run of this config, or None. A finished run with a different
    (non-cosmetic) config under the same run id is an error: overwrite it with force=True."""
    if not results_path.exists() or not (run_dir / "adapter" / "adapter_config.json").exists():
        return None
    res = results.read_result(results_path)
    if not res.get("train_info"):
        return None
    diff = differences(res["run_info"]["config"], as_stored(config))
    if diff:
        raise ConfigError(f"{diff[0]}={getattr(config, diff[0], None)!r}: {results_path} holds a finished run "
                          f"of {config.run_id()} with {diff[0]}={res['run_info']['config'].get(diff[0])!r}; "
                          f"expected {FORCE_HINT} to retrain, or {VARIANT_HINT} for a new run id")
    return res


class AdapterError(ValueError):
    """An adapter folder the kit will not load; the message names the folder and what it expects."""


def safetensors_adapter(folder: str | os.PathLike) -> str:
    """`folder`, as peft's from_pretrained / load_adapter take it, once it holds adapter_config.json and
    ADAPTER_WEIGHTS. Without the safetensors file peft would read adapter_model.bin, a pickle (torch.load);
    the kit never unpickles, so such a folder is refused here, saying what to do instead."""
    folder = Path(folder)
    for name in ("adapter_config.json", ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            hint = ("; it holds adapter_model.bin (a pickle), which the kit does not load: resave the adapter with "
                    "save_pretrained(..., safe_serialization=True)") if (folder / "adapter_model.bin").exists() else ""
            raise AdapterError(f"{folder}: no {name}; expected an adapter folder as peft's save_pretrained writes "
                               f"it (adapter_config.json + {ADAPTER_WEIGHTS}){hint}")
    return str(folder)


def adapter_config(folder: str | os.PathLike) -> dict:
    """An adapter folder's adapter_config.json (peft's save_pretrained), or AdapterError naming the folder / line."""
    from .config import read_json_object

    path = Path(folder) / "adapter_config.json"
    if not path.is_file():
        raise AdapterError(f"adapter={str(folder)!r}: expected a folder with adapter_config.json "
                           "(what save_pretrained / the kit's train writes)")
    return read_json_object(path, "peft's adapter config (a JSON object)", AdapterError)


def attach_adapter(model, folder: str | os.PathLike, base_name: str, **kwargs):
    """PeftModel.from_pretrained(model, folder, **kwargs) for an adapter folder safetensors_adapter accepts. An adapter
    trained on another base model (other layer shapes) is an AdapterError naming the folder, the base it was given
    and the base it was trained on, not torch's state-dict traceback of every mismatched tensor."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, safetensors_adapter(folder), **kwargs)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        first = next(line.strip() for line in str(e).splitlines() if "size mismatch" in line)
        recorded = adapter_config(folder).get("base_model_name_or_path")   # read by from_pretrained already
        trained = card_base(folder) or recorded or "another base model"
        if trained == str(base_name):   # the right name, other shapes: that model's folder changed since
            raise AdapterError(f"{folder}: its weights do not fit {base_name!r} as that model is now ({first}); "
                               "expected the model folder it was trained on, unchanged") from None
        raise AdapterError(f"{folder}: trained on {trained}, which does not fit the base model {base_name!r} "
                           f"({first}); expected the base it was trained on (--base / --model), or the run's "
                           "results file, which names it") from None


def task_record(tasks) -> dict:
    """TASK_FILE's content: each task's kind, label set, instruction and prompt format (registered tasks: built-in
    or own data), as the adapter's training prompts had them."""
    from .data import get_task

    out = {}
    for name in tasks:
        t = get_task(name)
        out[name] = {"kind": t.kind, "labels": list(t.labels) if t.labels else None, "instruction": t.instruction,
                     "prompt_format": t.prompt_format}
    return {"tasks": out}


def read_task_record(folder: str | Path) -> dict | None:
    """The tasks of an adapter or merged-model folder (TASK_FILE), or None for a folder without one."""
    from .config import read_json_object

    path = Path(folder) / TASK_FILE
    if not path.is_file():
        return None
    rec = read_json_object(path, "the kit's task record ({\"tasks\": {name: {labels, instruction, ...}}})",
                           AdapterError)
    if not isinstance(rec.get("tasks"), dict):
        raise AdapterError(f"{path}: expected a \"tasks\" mapping")
    return rec


def save_adapter(peft_model, adapter_dir: Path, card: str, base_id: str | None = None,
                 extra_files: dict[str, str] | None = None) -> int:
    """save_pretrained (plain peft can load it) + our model card (+ extra_files: name -> text, e.g. TASK_FILE),
    written beside and renamed into place. base_id: what adapter_config.json names as the base (peft takes the
    loaded model's path, which for the embedded model is a cache folder on this machine; its hub id is what a
    colleague can load)."""
    adapter_dir = Path(adapter_dir)
    tmp = adapter_dir.with_name(f".tmp-{adapter_dir.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if base_id:
        for cfg in peft_model.peft_config.values():
            cfg.base_model_name_or_path = base_id
    # the kit never resizes the vocabulary, and "auto" asks the hub whether the base's config exists (a network
    # lookup, and a warning on every offline save, once the config names a hub id)
    peft_model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
    (tmp / "README.md").write_text(card, encoding="utf-8")
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    results.usual_permissions(tmp)   # safetensors writes owner-only files: an adapter is meant to be shared
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(tmp, adapter_dir)
    return sum(f.stat().st_size for f in adapter_dir.iterdir() if f.suffix == ".safetensors")


# The card's front-matter key naming the base as the kit loaded it: adapter_config.json names SmolLM2's hub id for
# the embedded (dequantized Q4_1) copy too, so plain peft users can load it; merge reads this key to tell them apart.
BASE_KEY = "finlora_base"


def trained_on(model: str) -> str:
    """The base as the card's BASE_KEY names it: 'embedded', a hub id, or a local folder's name."""
    from .models import EMBEDDED

    return model if model == EMBEDDED or not Path(model).exists() else Path(model).name


def card_base(adapter_dir: Path) -> str | None:
    """BASE_KEY from an adapter's card (README.md front matter); None for an adapter without it."""
    card = Path(adapter_dir) / "README.md"
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("---\n"):
        return None
    for line in text.split("\n---", 1)[0].splitlines()[1:]:
        key, _, value = line.partition(":")
        if key.strip() == BASE_KEY:
            return value.strip() or None
    return None


def model_card(config: TrainConfig, info: dict, base_id: str) -> str:
    lo = config.lora
    curve = info["loss_curve"]
    first, last = (curve[0][1], curve[-1][1]) if curve else (float("nan"), float("nan"))
    return f"""---
library_name: peft
base_model: {base_id}
{BASE_KEY}: {trained_on(config.model)}
tags: [lora, finlora, finance, {config.precision}]
---
# {config.run_id()}

LoRA adapter trained with the FinLoRA study kit (`finlora_utils.train`) on {", ".join(config.tasks)}.

| setting | value |
|---|---|
| base model | `{base_id}` loaded at `{config.precision}`{" (double quant)" if config.double_quant else ""} |
| LoRA | rank {lo.rank}, alpha {lo.alpha:g}, dropout {lo.dropout:g}, {lo.variant}, targets {", ".join(lo.targets)} |
| optimisation | {config.optimizer}, lr {config.lr:g}, batch {config.batch_size} x accumulation {config.grad_accum}, warmup {config.warmup_ratio:g}, {info["steps"]} steps |
| data | {info["examples"]} examples seen, {info["target_tokens"]} target tokens, max_seq_len {config.max_seq_len} ({config.truncation}), truncated {info["truncated"]} |
| loss on target tokens | {first:.4f} (step 1) -> {last:.4f} (step {info["steps"]}) |
| time / memory | {info["wall_s"]:.1f} s, peak {info["peak_mem_bytes"] / 2**30:.2f} GiB ({info["peak_mem_method"]}) |

Prompt format (FinLoRA): `Instruction: ...\\nInput: ...\\nAnswer: ` followed by the answer; the loss covers
the answer tokens and eos only. Evaluation results, when computed, are in the run's results JSON (eval_info).

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base_id}"), "<this folder>")
```
Data licences follow the underlying datasets (see the kit's data/README.md).
"""
