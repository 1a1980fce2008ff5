"""LoRA setup: architecture-aware target modules, peft LoraConfig builders, counts from a config alone.

Everything except `build_lora_config` / `trainable_params_meta` / `apply_lora` is plain arithmetic over
a config dict, so the memory planner can use it without importing torch.
Model configs (HF config.json contents) for the models the paper and users care about ship under
finlora_utils/model_configs/, so counts work offline: `model_config("llama-3.1-8b")`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .config import ConfigError, LoraSettings

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

# Canonical (Llama-style) projection names; other families map onto them.
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LLAMA_STYLE = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "granite")
# GPT-2 fuses q/k/v into one Conv1D (c_attn) and names both output projections c_proj;
# peft matches targets by suffix, so "attn.c_proj" / "mlp.c_proj" select one each.
GPT2_NAMES = {"q_proj": "c_attn", "k_proj": "c_attn", "v_proj": "c_attn", "o_proj": "attn.c_proj",
              "up_proj": "c_fc", "down_proj": "mlp.c_proj"}
GPT2_ATTENTION = ("c_attn", "attn.c_proj")
GPT2_MLP = ("c_fc", "mlp.c_proj")
ALIASES = ("attention", "mlp", "all-linear")

# The two published hyper-parameter sets (FinLoRA 2024 code vs. 2025 configs) x the three precisions.
PAPER_SETTINGS = [
    dict(name=f"{bits}-bit r{rank} ({src})", bits=bits, rank=rank, alpha=alpha, dropout=dropout, source=src)
    for src, alpha, dropout in (("2025 configs", 16.0, 0.05), ("2024 code", 32.0, 0.1))
    for bits, rank in ((16, 8), (8, 8), (4, 4))
]

# Extra names that map to a shipped config file (hub ids, the kit's own names).
_NAME_ALIASES = {"embedded": "smollm2-135m", "meta-llama-3.1-8b": "llama-3.1-8b",
                 "meta-llama-3.1-70b": "llama-3.1-70b", "mistral-7b-v0.3": "mistral-7b"}


# ---------------------------------------------------------------- model configs

def shipped_models() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _shipped_key(name: str) -> str | None:
    """'meta-llama/Llama-3.1-8B-Instruct' -> 'llama-3.1-8b' when that file ships."""
    key = name.strip().lower().split("/")[-1]
    key = re.sub(r"-(instruct|chat|it|hf)$", "", key)
    key = re.sub(r"-instruct-v0\.\d$", "", key)
    key = re.sub(r"-v0\.\d$", "", key)
    key = _NAME_ALIASES.get(key, key)
    return key if (CONFIG_DIR / f"{key}.json").exists() else None


def hub_id(name: str) -> str | None:
    """Hub id of a shipped config name ('llama-3.1-8b' -> 'meta-llama/Llama-3.1-8B-Instruct'), else None;
    lets models.load_model accept the same short names as the planner."""
    if not isinstance(name, str) or "/" in name or name in ("embedded", "tiny-random-llama"):
        return None   # already a hub id / path, or one of the kit's own models
    key = _shipped_key(name)
    return json.loads((CONFIG_DIR / f"{key}.json").read_text()).get("_name_or_path") if key else None


def model_config(model: Any) -> dict:
    """Config dict for a shipped name / hub id, a local dir or config.json, a transformers config or model."""
    if isinstance(model, dict):
        return model
    if hasattr(model, "config") and hasattr(model.config, "to_dict"):  # a model (maybe peft-wrapped)
        return model.config.to_dict()
    if hasattr(model, "to_dict") and hasattr(model, "model_type"):   # a PretrainedConfig
        return model.to_dict()
    if not isinstance(model, (str, Path)) or str(model).strip() == "":
        raise ConfigError(f"model={model!r}: expected a model name, a config.json path, a config dict or a model")
    path = Path(str(model)).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return json.loads((path / "config.json").read_text())
    if path.is_file() and path.suffix == ".json":
        return json.loads(path.read_text())
    key = _shipped_key(str(model))
    if key is not None:
        return json.loads((CONFIG_DIR / f"{key}.json").read_text())
    raise ConfigError(
        f"model={str(model)!r}: unknown model; expected one of {', '.join(shipped_models())} "
        "(or their hub ids), a local directory with config.json, or a config.json path"
    )


def family(cfg: dict) -> str:
    mt = cfg.get("model_type", "")
    if mt in LLAMA_STYLE:
        return "llama"
    if mt == "gpt2":
        return "gpt2"
    raise ConfigError(f"model_type={mt!r}: unsupported architecture; expected one of {', '.join(LLAMA_STYLE + ('gpt2',))}")


def n_layers(cfg: dict) -> int:
    return int(cfg.get("num_hidden_layers") or cfg["n_layer"])


def hidden_size(cfg: dict) -> int:
    return int(cfg.get("hidden_size") or cfg["n_embd"])


def linear_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every projection in ONE decoder layer, keyed by target name."""
    h = hidden_size(cfg)
    if family(cfg) == "gpt2":
        inner = cfg.get("n_inner") or 4 * h
        return {"c_attn": (h, 3 * h), "attn.c_proj": (h, h), "c_fc": (h, inner), "mlp.c_proj": (inner, h)}
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or h // heads
    i = cfg["intermediate_size"]
    return {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def linear_biases(cfg: dict) -> dict[str, bool]:
    """Which projections carry a bias (Qwen2 has q/k/v biases, GPT-2 biases everywhere)."""
    fam, mt = family(cfg), cfg.get("model_type")
    if fam == "gpt2":
        return {k: True for k in GPT2_ATTENTION + GPT2_MLP}
    attn_bias = bool(cfg.get("attention_bias", False)) or mt == "qwen2"
    out = {k: attn_bias for k in ("q_proj", "k_proj", "v_proj")}
    out["o_proj"] = bool(cfg.get("attention_bias", False))
    out.update({k: bool(cfg.get("mlp_bias", False)) for k in MLP})
    return out


# ---------------------------------------------------------------- target modules

def _present_names(model) -> set[str] | None:
    """Target names that exist in a live model (suffixes of Linear/Conv1D leaves), or None for a config."""
    if not hasattr(model, "named_modules"):
        return None
    names = set()
    for full, mod in model.named_modules():
        if hasattr(mod, "weight") and type(mod).__name__ in ("Linear", "Conv1D", "Linear8bitLt", "Linear4bit"):
            parts = full.split(".")
            names.add(parts[-1])
            if len(parts) >= 2:
                names.add(".".join(parts[-2:]))
    return names


def target_modules(model_or_config: Any, wanted=("q_proj", "k_proj", "v_proj")) -> list[str]:
    """Resolve requested targets to this architecture's module names.

    `wanted` holds Llama-style names (q_proj, ..., down_proj), the architecture's own names (c_attn),
    or the aliases attention / mlp / all-linear. Unknown names raise ConfigError naming `targets`.
    """
    if isinstance(wanted, str):
        wanted = [w.strip() for w in wanted.split(",") if w.strip()]
    if not wanted:
        raise ConfigError("targets=(): expected at least one module name, e.g. q_proj,k_proj,v_proj")
    cfg = model_config(model_or_config)
    fam = family(cfg)
    native = tuple(linear_shapes(cfg))
    attn, mlp = (GPT2_ATTENTION, GPT2_MLP) if fam == "gpt2" else (ATTENTION, MLP)
    out: list[str] = []
    for w in wanted:
        if w in ("attention", "attn"):
            names = list(attn)
        elif w == "mlp":
            names = list(mlp)
        elif w in ("all-linear", "all_linear", "all"):
            names = list(native)
        elif w in native:
            names = [w]
        elif fam == "gpt2" and w in GPT2_NAMES:
            names = [GPT2_NAMES[w]]
        else:
            raise ConfigError(
                f"targets={w!r}: no such module in {cfg.get('model_type')}; expected one of "
                f"{', '.join(native)} or {', '.join(ALIASES)}"
            )
        out += [n for n in names if n not in out]
    present = _present_names(model_or_config)
    if present is not None:  # a live model: check the names really exist (e.g. a custom variant)
        missing = [n for n in out if n not in present]
        if missing:
            raise ConfigError(f"targets={missing[0]!r}: not a Linear module of this model; it has "
                              f"{', '.join(sorted(p for p in present if '.' not in p))}")
    return out


# ---------------------------------------------------------------- peft config and counts

def build_lora_config(settings: LoraSettings, model_or_config: Any):
    """peft LoraConfig for CAUSAL_LM with this architecture's target names; rsLoRA / DoRA per variant."""
    from peft import LoraConfig

    settings.validate()
    cfg = model_config(model_or_config)
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_modules(model_or_config, settings.targets),
        bias="none",
        task_type="CAUSAL_LM",
        use_rslora=settings.variant == "rslora",  # scale alpha/sqrt(r) instead of alpha/r
        use_dora=settings.variant == "dora",
        fan_in_fan_out=family(cfg) == "gpt2",  # GPT-2's Conv1D stores weights transposed
    )


def apply_lora(model, settings: LoraSettings):
    """Wrap a loaded model with peft; returns the PeftModel (only adapter weights trainable)."""
    from peft import get_peft_model

    return get_peft_model(model, build_lora_config(settings, model))


def _per_layer(cfg: dict, settings: LoraSettings) -> list[tuple[str, int, int]]:
    shapes = linear_shapes(cfg)
    return [(n, *shapes[n]) for n in target_modules(cfg, settings.targets)]


def trainable_params(model_config_or_name: Any, settings: LoraSettings) -> int:
    """LoRA A (r x in) + B (out x r) per targeted module per layer; DoRA adds a magnitude per out-feature."""
    settings.validate()
    cfg = model_config(model_config_or_name)
    per_layer = 0
    for _, fin, fout in _per_layer(cfg, settings):
        per_layer += settings.rank * (fin + fout)
        if settings.variant == "dora":
            per_layer += fout
    return per_layer * n_layers(cfg)


def adapter_tensors(model_config_or_name: Any, settings: LoraSettings) -> int:
    cfg = model_config(model_config_or_name)
    per_module = 3 if settings.variant == "dora" else 2
    return per_module * len(_per_layer(cfg, settings)) * n_layers(cfg)


def adapter_bytes(model_config_or_name: Any, settings: LoraSettings, dtype_bytes: int = 4) -> int:
    """Size of adapter_model.safetensors: tensor data plus the JSON header (~ one entry per tensor)."""
    if dtype_bytes not in (1, 2, 4, 8):
        raise ConfigError(f"dtype_bytes={dtype_bytes!r}: expected one of 1, 2, 4, 8")
    data = trainable_params(model_config_or_name, settings) * dtype_bytes
    # A header entry is '"base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight":{"dtype":"F32",
    # "shape":[r,in],"data_offsets":[a,b]},' = about 130 bytes; 8 more for the length prefix.
    return data + 130 * adapter_tensors(model_config_or_name, settings) + 8


def trainable_params_meta(model_config_or_name: Any, settings: LoraSettings) -> int:
    """Cross-check of trainable_params: instantiate the architecture on the meta device (no weights)
    and let peft count."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(model_config(model_config_or_name))
    mt = cfg.pop("model_type")
    for k in ("_name_or_path", "architectures", "transformers_version"):
        cfg.pop(k, None)
    hf_cfg = AutoConfig.for_model(mt, **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_cfg)
    peft_model = get_peft_model(model, build_lora_config(settings, cfg | {"model_type": mt}))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    return int(trainable)
