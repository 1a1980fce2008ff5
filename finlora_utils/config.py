"""Validated dataclasses for every run setting, and presets (flat notebook parameters).

One config system: notebooks and CLIs build these from flat literals; a bad value raises
ConfigError naming the parameter and what is allowed, before any model is loaded.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any



@dataclass(frozen=True)
class Precision:
    """A precision the kit loads a base model at: the one place its bits and planner terms come from."""
    name: str
    bits: int          # bits per projection weight as loaded (fp32: 32); run ids say f"{bits}bit"
    quantized: bool    # bitsandbytes holds the projections (int8, nf4, fp4)

    @property
    def planner_bits(self) -> int:
        """memory.plan counts 16 / 8 / 4-bit projections; fp32 is a 16-bit plan with 4-byte tensors."""
        return min(self.bits, 16)

    @property
    def planner_kwargs(self) -> dict:
        """What memory.plan needs besides the bits: an fp32 run stores and computes in 4 bytes."""
        return dict(compute_bytes=4, base_bytes=4) if self.name == "fp32" else {}

    @property
    def label(self) -> str:
        """'4-bit': how tables and figures name it (fp32 and bf16 are both the unquantized baseline)."""
        return f"{self.planner_bits}-bit"


PIPELINE_SPLITS = ("memory", "even")
PRECISION = {p.name: p for p in (Precision("fp32", 32, False), Precision("bf16", 16, False),
                                  Precision("int8", 8, True), Precision("nf4", 4, True), Precision("fp4", 4, True))}
PRECISIONS = tuple(PRECISION)
QUANTIZED = tuple(n for n, p in PRECISION.items() if p.quantized)
AUTO = "auto"   # the unquantized baseline at the fastest exact-enough dtype of this machine (resolve_precision)
BITS_TO_PRECISION = {32: "fp32", 16: "bf16", 8: "int8", 4: "nf4"}
PRECISION_BITS = {n: p.bits for n, p in PRECISION.items()}
VARIANTS = ("lora", "rslora", "dora")
PARALLEL = ("none", "ddp", "pipeline")
SCHEDULES = ("gpipe", "1f1b")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")   # the 8-bit ones: bitsandbytes, CUDA only
CPU_MEMORY_MODES = ("exact", "fast")   # how a CPU run measures its peak: memory.set_heap_mode
EVAL_MODES = ("score", "generate", "calibrated")
PRESETS = ("smoke", "cpu", "gpu", "paper")
PRESET_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_MAX_LABELS = 20   # own data: at most this many distinct train targets make a label set (classification)


class ConfigError(ValueError):
    """A setting is out of range; the message starts with the parameter name."""


# How a message names "retrain" and "a new run id" to every kind of user: command line, notebook, Python
FORCE_HINT = "--force (FORCE = True in a notebook, make study FORCE=1, force=True in Python)"
VARIANT_HINT = "--variant-tag (variant_tag in Python)"


def model_slug(name: str) -> str:
    """The model's part of a run id: 'embedded' is smollm2-135m; a path or hub id its last part, lowercased."""
    if name == "embedded":
        return "smollm2-135m"
    return re.sub(r"[^a-z0-9.]+", "-", Path(name).name.lower()).strip("-") or "model"


def precision_info(name: str) -> Precision:
    """The Precision value of a resolved precision name ('auto' must be resolved first)."""
    if name not in PRECISION:
        raise ConfigError(f"precision={name!r}: expected one of {', '.join(PRECISIONS)} (or {AUTO!r}, resolved first)")
    return PRECISION[name]


def resolve_precision(precision: str) -> str:
    """'auto' -> 'bf16' where the hardware computes bf16 natively (CUDA, AVX-512-BF16/AMX CPUs), else 'fp32'.

    Why: on a CPU without native bf16 (AVX2-only AMD EPYC, many laptops) a bf16 matmul is about 8x slower
    than fp32, which turns the 16-bit baseline into the slowest run of a study. Configs store the resolved
    name, so run ids and results say what actually ran. Any other value is returned unchanged.
    """
    if precision != AUTO:
        return precision
    import torch

    from . import hardware

    return "bf16" if torch.cuda.is_available() or hardware.default_compute_dtype() == torch.bfloat16 else "fp32"


def _check(cond: bool, param: str, value: Any, expected: str) -> None:
    if not cond:
        raise ConfigError(f"{param}={value!r}: expected {expected}")


def _check_types(obj) -> None:
    """Each scalar field's value has its default's type (an int where a float is expected is fine), so a config
    file's "lr": "abc" or "rank": 4.5 is named here instead of failing later in a comparison or deep in a run."""
    for f in dataclasses.fields(obj):
        default, v = f.default, getattr(obj, f.name)
        if isinstance(default, bool):
            ok, kind, cast = isinstance(v, bool), "true or false", bool
        elif isinstance(default, int):   # numbers.Integral: numpy's integers too (a notebook's computed sizes)
            ok, kind, cast = isinstance(v, numbers.Integral) and not isinstance(v, bool), "an integer", int
        elif isinstance(default, float):
            ok, kind, cast = isinstance(v, numbers.Real) and not isinstance(v, bool), "a number", float
        elif isinstance(default, str):   # path fields may come as Path objects
            ok, kind, cast = isinstance(v, (str, os.PathLike)), "a string", os.fspath
        else:
            continue
        _check(ok, f.name, v, kind)
        if type(v) not in (bool, int, float, str):   # numpy numbers, Paths: stored as the plain value
            setattr(obj, f.name, cast(v))


def number_list(param: str, value, kind: type = int, empty: bool = False) -> list:
    """A notebook's comma-separated numbers ('4,8,16', or one number as papermill passes -p RANKS 8), each of
    `kind`; ConfigError naming the parameter and the item that is not one, or an empty list unless `empty`."""
    what = "an integer" if kind is int else "a number"
    out = []
    for item in str(value).split(","):
        if item.strip():
            try:
                out.append(kind(item.strip()))
            except ValueError:
                raise ConfigError(f"{param}={value!r}: {item.strip()!r} is not {what}; expected comma-separated "
                                  f"{'integers' if kind is int else 'numbers'}") from None
    if not out and not empty:
        raise ConfigError(f"{param}={value!r}: expected at least one {what.split()[-1]}, comma-separated")
    return out


def file_task_name(train_file: str, task_name: str = "") -> str:
    """The name of a task read from files: task_name, else the train file's stem without a train suffix
    (``data/my_bank_train.jsonl`` -> ``my_bank``), lower-case letters, digits and underscores."""
    name = task_name or re.sub(r"[_\-.]?train$", "", Path(train_file).stem, flags=re.I) or Path(train_file).stem
    name = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    _check(bool(name), "task_name", task_name, "a name of letters, digits and underscores")
    return name


def _as_tuple(v) -> tuple:
    if v is None:
        return ()
    if isinstance(v, str):
        return tuple(s.strip() for s in v.split(",") if s.strip())
    return tuple(v)


@dataclass
class LoraSettings:
    """LoRA adapter shape. FinLoRA: 16-bit r8, 8-bit r8, 4-bit r4; q/k/v; alpha 32 dropout 0.1 (2024)
    or alpha 16 dropout 0.05 (2025 configs)."""
    rank: int = 4
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple = ("q_proj", "k_proj", "v_proj")
    variant: str = "lora"

    def __post_init__(self):
        _check_types(self)
        _check(isinstance(self.targets, (str, list, tuple)), "targets", self.targets,
               "module names: a comma-separated string or a list, e.g. q_proj,k_proj,v_proj")
        self.targets = _as_tuple(self.targets)
        self.validate()

    def validate(self):
        _check(isinstance(self.rank, int) and self.rank > 0, "rank", self.rank, "an integer > 0")
        _check(self.alpha > 0, "alpha", self.alpha, "> 0")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "in [0, 1)")
        _check(len(self.targets) > 0, "targets", self.targets, "at least one module name, e.g. q_proj,k_proj,v_proj")
        _check(self.variant in VARIANTS, "variant", self.variant, f"one of {', '.join(VARIANTS)}")


DEFAULT_OUTPUT_DIR = "reports/runs"


@dataclass
class TrainConfig:
    """One finetuning run: model x tasks x precision x LoRA shape x optimisation."""
    model: str = "embedded"
    tasks: tuple = ("fpb",)
    precision: str = "nf4"
    double_quant: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = 2e-4
    epochs: float = 1.0
    max_steps: int = 0                 # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    max_seq_len: int = 512
    truncation: str = "head"           # head | head_tail: which part of the Input text survives
    max_train_samples: int = 0         # 0 = all
    train_split: str = "train"         # train | fit (train minus the 10% validation holdout, for tuning)
    seed: int = 0
    grad_checkpointing: str = "auto"   # auto (planner decides) | on | off
    label_only_logits: bool = True
    # the batch's common prompt prefix (FinLoRA's instruction) runs once per micro-batch, not once per example
    # (shared_prefix.py): same loss, fewer tokens; the prefix shares one LoRA dropout mask across the batch
    share_prefix: bool = True
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    optimizer: str = "adamw"           # adamw | adamw_8bit | paged_adamw_8bit (CUDA)
    save_every: int = 0                # checkpoint every N optimizer steps, 0 = only at the end
    log_every: int = 10
    output_dir: str = DEFAULT_OUTPUT_DIR   # the checkout's reports/runs (FINLORA_REPORTS_DIR/runs), not ./reports
    parallel: str = "none"
    nproc: int = 1
    micro_batches: int = 2             # pipeline only; 0: the kit chooses (finlora_utils.microbatch)
    schedule: str = "gpipe"            # gpipe | 1f1b (pipeline only)
    # pipeline only: layers per stage balanced by the planner's memory (the most loaded stage as light as it
    # can be) or even (the same layers per stage: faster where memory is not the limit). No effect on the adapter.
    pipeline_split: str = "memory"
    variant_tag: str = ""              # extra run-id suffix
    # CPU: exact = the planner's live-tensor peak, training 1.5-2.3x slower; fast = full speed, the peak
    # includes the freed memory glibc's heap keeps (memory.set_heap_mode). No effect on the adapter.
    cpu_memory: str = "exact"
    # Own data: a task read from files (data.register_files). Its name replaces `tasks` unless tasks lists it
    # (list it beside built-in tasks for a multi-task mix).
    train_file: str = ""               # JSONL in FinLoRA format, or CSV with text and label columns
    test_file: str = ""                # optional; without it the validation holdout of train is the test split
    task_name: str = ""                # default: from the train file's name
    instruction: str = ""              # prompt instruction for CSV rows (default: choose from the labels)
    max_labels: int = DEFAULT_MAX_LABELS   # <= this many distinct train targets: a label set, scored
    text_column: str = ""              # CSV/TSV: the text column (default: text, sentence, ... as validate finds)
    label_column: str = ""             # CSV/TSV: the label column (default: label, target or answer)

    def __post_init__(self):
        _check_types(self)
        _check(isinstance(self.tasks, (str, list, tuple)) and all(isinstance(t, str) for t in _as_tuple(self.tasks)),
               "tasks", self.tasks, "task names: a comma-separated string or a list of strings")
        self.tasks = _as_tuple(self.tasks)
        self.precision = resolve_precision(self.precision)
        if isinstance(self.lora, dict):
            known = {f.name for f in dataclasses.fields(LoraSettings)}
            unknown = sorted(set(self.lora) - known)
            if unknown:
                raise ConfigError(f"lora.{unknown[0]}: unknown LoraSettings parameter; known: "
                                  f"{', '.join(sorted(known))}")
            self.lora = LoraSettings(**self.lora)
        _check(isinstance(self.lora, LoraSettings), "lora", self.lora,
               f"a mapping of LoraSettings fields ({', '.join(f.name for f in dataclasses.fields(LoraSettings))})")
        if self.output_dir == DEFAULT_OUTPUT_DIR:   # beside the results (reports/results), from any folder
            from .paths import reports_dir

            self.output_dir = str(reports_dir() / "runs")
        for f in ("train_file", "test_file"):   # absolute: evaluation and torchrun ranks may run elsewhere
            if getattr(self, f):
                setattr(self, f, str(Path(getattr(self, f)).expanduser().resolve()))
        if self.train_file:
            name = file_task_name(self.train_file, self.task_name)
            if name not in self.tasks:
                self.tasks = (name,)
        self.validate()

    def validate(self):
        _check(isinstance(self.model, str) and self.model != "", "model", self.model, "a name: embedded, tiny-random-llama, a hub id or a local path")
        _check(len(self.tasks) > 0, "tasks", self.tasks, "at least one task name")
        _check(len(set(self.tasks)) == len(self.tasks), "tasks", ",".join(self.tasks),
               "each task once (a repeated one would be trained twice per example)")
        _check(re.fullmatch(r"[A-Za-z0-9_.+-]*", self.variant_tag) is not None, "variant_tag", self.variant_tag,
               "letters, digits and . _ + - (it ends the run id, a file and a folder name)")
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)} or {AUTO}")
        _check(0 < self.lr < float("inf"), "lr", self.lr, "> 0 and finite")
        _check(self.epochs > 0 or self.max_steps > 0, "epochs", self.epochs, "> 0 (or max_steps > 0)")
        _check(self.max_steps >= 0, "max_steps", self.max_steps, ">= 0")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(self.grad_accum >= 1, "grad_accum", self.grad_accum, ">= 1")
        _check(self.max_seq_len >= 16, "max_seq_len", self.max_seq_len, ">= 16")
        _check(self.truncation in ("head", "head_tail"), "truncation", self.truncation, "head or head_tail")
        _check(self.max_train_samples >= 0, "max_train_samples", self.max_train_samples, ">= 0 (0 = all)")
        _check(self.train_split in ("train", "fit"), "train_split", self.train_split,
               "train (all of it) or fit (train minus the validation holdout)")
        _check(self.grad_checkpointing in ("auto", "on", "off"), "grad_checkpointing", self.grad_checkpointing, "auto, on or off")
        _check(isinstance(self.share_prefix, bool), "share_prefix", self.share_prefix, "true or false")
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "in [0, 1)")
        _check(self.save_every >= 0, "save_every", self.save_every, ">= 0")
        _check(self.log_every >= 1, "log_every", self.log_every, ">= 1")
        _check(self.parallel in PARALLEL, "parallel", self.parallel, f"one of {', '.join(PARALLEL)}")
        _check(self.nproc >= 1, "nproc", self.nproc, ">= 1")
        # more processes without a parallel mode would run one and still record nproc in the results
        _check(self.parallel != "none" or self.nproc == 1, "nproc", self.nproc,
               "1 with parallel='none'; more processes train under torchrun: `python -m finlora_utils parallel "
               "--parallel ddp|pipeline --nproc N` (parallel.launch in Python)")
        _check(isinstance(self.micro_batches, int) and self.micro_batches >= 0, "micro_batches", self.micro_batches,
               ">= 1, or 0 for the kit to choose (pipeline)")
        _check(self.schedule in SCHEDULES, "schedule", self.schedule, " or ".join(SCHEDULES))
        _check(self.pipeline_split in PIPELINE_SPLITS, "pipeline_split", self.pipeline_split,
               f"one of {', '.join(PIPELINE_SPLITS)}")
        _check(self.cpu_memory in CPU_MEMORY_MODES, "cpu_memory", self.cpu_memory,
               "exact (peak memory as the planner predicts it; slower on CPU) or fast (full speed; the peak "
               "includes freed memory the heap keeps)")
        _check(isinstance(self.max_labels, int) and self.max_labels >= 0, "max_labels", self.max_labels,
               "an integer >= 0 (0: never a label set)")
        for f in ("test_file", "task_name", "instruction", "text_column", "label_column"):
            _check(not getattr(self, f) or bool(self.train_file), f, getattr(self, f),
                   "to be given with train_file (a task read from files)")
        if self.lora.variant == "dora" and self.precision == "int8":
            raise ConfigError("lora.variant='dora' with precision='int8': bitsandbytes 8-bit + DoRA fails on CPU; use nf4 or bf16")
        self.lora.validate()

    @property
    def bits(self) -> int:
        return PRECISION[self.precision].bits

    def run_id(self) -> str:
        """<task(s)>_<model>_<bits>bit_r<rank>[_<variant>][_fit][_<variant_tag>]"""
        tasks = "+".join(self.tasks)
        parts = [tasks, model_slug(self.model), f"{self.bits}bit", f"r{self.lora.rank}"]
        if self.lora.variant != "lora":
            parts.append(self.lora.variant)
        if self.train_split != "train":
            parts.append(self.train_split)
        if self.variant_tag:
            parts.append(self.variant_tag)
        return "_".join(parts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown TrainConfig parameter; known: {', '.join(sorted(known))}")
        return cls(**d)


@dataclass
class EvalConfig:
    model: str = "embedded"
    tasks: tuple = ("fpb",)
    precision: str = "bf16"
    mode: str = "score"
    max_test_samples: int = 0        # 0 = all
    batch_size: int = 8
    max_new_tokens: int = 10
    max_seq_len: int = 1024
    seed: int = 0

    def __post_init__(self):
        _check_types(self)   # as TrainConfig: a grid's MAX_TEST_SAMPLES: "5" is named here, not in a notebook cell
        _check(isinstance(self.tasks, (str, list, tuple)) and all(isinstance(t, str) for t in _as_tuple(self.tasks)),
               "tasks", self.tasks, "task names: a comma-separated string or a list of strings")
        self.tasks = _as_tuple(self.tasks)
        self.precision = resolve_precision(self.precision)
        self.validate()

    def validate(self):
        _check(len(self.tasks) > 0, "tasks", self.tasks, "at least one task name")
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)} or {AUTO}")
        _check(self.mode in EVAL_MODES, "mode", self.mode, f"one of {', '.join(EVAL_MODES)}")
        _check(self.max_test_samples >= 0, "max_test_samples", self.max_test_samples, ">= 0 (0 = all)")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, ">= 1")


def paper_settings(bits: int) -> tuple[str, LoraSettings]:
    """FinLoRA's three configurations: 16-bit r8, 8-bit r8, 4-bit r4 (2025 configs: alpha 16, dropout 0.05)."""
    _check(bits in (16, 8, 4), "bits", bits, "one of 16, 8, 4")
    rank = 4 if bits == 4 else 8
    return BITS_TO_PRECISION[bits], LoraSettings(rank=rank, alpha=16.0, dropout=0.05)


def load_preset(name: str, notebook: str | None = None) -> dict:
    """Flat notebook parameters of a preset: its `common` section plus the notebook's own section."""
    import yaml

    _check(name in PRESETS, "PRESET", name, f"one of {', '.join(PRESETS)}")
    path = PRESET_DIR / f"{name}.yaml"
    doc = yaml.safe_load(path.read_text()) or {}
    params = dict(doc.get("common", {}))
    if notebook:
        params.update((doc.get("notebooks", {}) or {}).get(notebook, {}) or {})
    params["PRESET"] = name
    return params


# ---------------------------------------------------------------- CLI flags from the dataclasses

LORA_FLAG_ALIASES = ("rank", "alpha", "dropout", "targets", "variant")   # the short forms the README uses


def config_args(ap: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field (lora fields as --lora-rank etc.), defaults from the dataclass."""
    for f in dataclasses.fields(TrainConfig):
        if f.name == "lora":
            continue
        ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                        help=f"TrainConfig.{f.name}")
    for f in dataclasses.fields(LoraSettings):
        ap.add_argument(f"--lora-{f.name}", dest=f"lora_{f.name}", default=None, help=f"LoraSettings.{f.name}")
    for f in LORA_FLAG_ALIASES:
        ap.add_argument(f"--{f}", dest=f"lora_{f}", help=f"alias of --lora-{f}")


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    """TrainConfig from CLI strings, cast to each field's default type; --config FILE gives the base."""
    base = read_config_file(ns.config) if getattr(ns, "config", None) else {}
    base.setdefault("lora", {})
    if not isinstance(base["lora"], dict):
        raise ConfigError(f"{ns.config}: lora={base['lora']!r}: expected an object of LoraSettings fields")
    defaults, lora_defaults = TrainConfig(), LoraSettings()
    for f in dataclasses.fields(TrainConfig):
        v = getattr(ns, f.name, None)
        if f.name != "lora" and v is not None:
            base[f.name] = _cast(v, getattr(defaults, f.name), f"--{f.name.replace('_', '-')}")
    for f in dataclasses.fields(LoraSettings):
        v = getattr(ns, f"lora_{f.name}", None)
        if v is not None:
            flag = f"--lora-{f.name}" + (f" (--{f.name})" if f.name in LORA_FLAG_ALIASES else "")
            base["lora"][f.name] = _cast(v, getattr(lora_defaults, f.name), flag)
    return TrainConfig.from_dict(base)


def read_json_object(path: str | Path, expected: str, error: type[Exception] = ConfigError) -> dict:
    """A JSON file that holds one object, or `error` naming the file (and line) and what was `expected`.
    OSError (a missing file) passes through for the caller to name."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise error(f"{path}:{e.lineno}: not valid JSON ({e.msg}); expected {expected}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text; expected {expected}") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: a JSON {type(obj).__name__}, expected {expected}")
    return obj


def read_config_file(path: str | Path) -> dict:
    """A TrainConfig as JSON (what results store under run_info.config): an object of its fields."""
    if not Path(path).is_file():   # --config names it: say so, not the bare errno
        raise ConfigError(f"config={str(path)!r}: no such file; expected a JSON object of TrainConfig fields "
                          "(e.g. a results file's run_info.config)")
    return read_json_object(path, "an object of TrainConfig fields")


def _cast(v: str, default, name: str):
    kind = {bool: "true or false", int: "an integer", float: "a number"}.get(type(default))
    try:
        if isinstance(default, bool):
            if v.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return v.lower() in ("1", "true", "yes")
        if isinstance(default, (int, float)):
            return type(default)(v)
    except ValueError:
        raise ConfigError(f"{name} {v!r}: expected {kind}") from None
    return v
