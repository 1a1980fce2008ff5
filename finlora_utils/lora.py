"""LoRA setup: architecture-aware target modules, peft LoraConfig builders, counts from a config alone.

Target names and shapes come from the architecture's real module tree (finlora_utils.arch: the model
built on the meta device), so fused projections, biases and mixture-of-experts layers count right for
any causal LM transformers ships. Counts are plain arithmetic over those facts; for the shipped configs
the facts ship too, so the memory planner can use them without importing torch.
Model configs (HF config.json contents) for the models the paper and users care about ship under
finlora_utils/model_configs/, so counts work offline: `model_config("llama-3.1-8b")`.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

from . import arch
from .config import ConfigError, LoraSettings, read_json_object

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

# Llama-style projection names: aliases on every architecture, and the planner's canonical activation shapes.
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
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
        return read_config_json(path / "config.json")
    if path.is_file() and path.suffix == ".json":
        return read_config_json(path)
    key = _shipped_key(str(model))
    if key is not None:
        return json.loads((CONFIG_DIR / f"{key}.json").read_text())
    raise ConfigError(
        f"model={str(model)!r}: unknown model; expected one of {', '.join(shipped_models())} "
        "(or their hub ids), a local directory with config.json, or a config.json path"
    )


def read_config_json(path: Path) -> dict:
    """A model's config.json as a dict, or a ConfigError naming the file and what is wrong with it."""
    return read_json_object(path, "a model's config.json (an object)")


def family(cfg: dict) -> str:
    mt = cfg.get("model_type", "")
    if mt == "gpt2":
        return "gpt2"
    if all(k in cfg for k in ("num_attention_heads", "hidden_size", "intermediate_size")):
        return "llama"   # the activation model's canonical shapes; weights and targets come from arch
    raise ConfigError(f"model_type={mt!r}: the planner's activation model needs num_attention_heads, hidden_size "
                      "and intermediate_size (or GPT-2's n_head / n_embd) in the config")


def _number(cfg: dict, keys: tuple[str, ...], what: str) -> int:
    v = next((cfg[k] for k in keys if cfg.get(k)), None)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"config: {' / '.join(keys)}={v!r}: expected the model's {what}, an integer >= 1")
    return v


def n_layers(cfg: dict) -> int:
    return _number(cfg, ("num_hidden_layers", "n_layer"), "number of decoder layers")


def hidden_size(cfg: dict) -> int:
    return _number(cfg, ("hidden_size", "n_embd"), "hidden size")


def linear_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """Canonical (Llama-style / GPT-2) (in_features, out_features) of one decoder layer's projections, from
    the config's numbers: what the planner's activation model reads. Weights and LoRA counts use the real
    module tree instead (arch.facts)."""
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


# ---------------------------------------------------------------- target modules

# Where a module sits tells its role: the first component of its path inside a decoder layer.
ATTENTION_PARENTS = ("attn", "attention")
# Llama-style names -> what other architectures call the same projection; a fused module (qkv_proj,
# gate_up_proj, c_attn) is selected by each of the names it fuses, with a warning.
LLAMA_ALIASES = {
    "q_proj": ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "W_pack"),
    "k_proj": ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "W_pack"),
    "v_proj": ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "W_pack"),
    "o_proj": ("dense", "out_proj", "c_proj"),
    "gate_proj": ("gate_up_proj", "w1"),
    "up_proj": ("gate_up_proj", "dense_h_to_4h", "c_fc", "fc1", "w3"),
    "down_proj": ("dense_4h_to_h", "c_proj", "fc2", "w2"),
}
FUSED = ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "W_pack", "gate_up_proj")


def _is_attention(entry: dict) -> bool:
    return any(a in entry["path"].split(".")[0].lower() for a in ATTENTION_PARENTS)


def _facts(model_or_config: Any) -> dict:
    return arch.facts(model_config(model_or_config))


def _select(facts: dict, wanted) -> list[dict]:
    """The layer modules a target list selects (peft suffix names), in module order."""
    if isinstance(wanted, str):
        wanted = [w.strip() for w in wanted.split(",") if w.strip()]
    if not wanted:
        raise ConfigError("targets=(): expected at least one module name, e.g. q_proj,k_proj,v_proj")
    mods = facts["modules"]
    chosen: list[dict] = []
    fused: list[str] = []
    for w in wanted:
        if w in ("attention", "attn"):
            hit = [m for m in mods if _is_attention(m)]
        elif w == "mlp":
            hit = [m for m in mods if not _is_attention(m)]
        elif w in ("all-linear", "all_linear", "all"):
            hit = list(mods)
        else:
            hit = [m for m in mods if w in (m["name"], m["path"]) or m["path"].endswith("." + w)]
            if w in LLAMA_ALIASES:   # the architecture's own name for this Llama projection
                role = w in ATTENTION
                extra = [m for m in mods if m not in hit and _is_attention(m) == role
                         and m["path"].split(".")[-1] in LLAMA_ALIASES[w]]
                fused += [f"{w} -> {m['name']}" for m in extra if m["path"].split(".")[-1] in FUSED]
                hit += extra
        if not hit:
            names = ", ".join(dict.fromkeys(m["name"] for m in mods))
            raise ConfigError(f"targets={w!r}: no such module in {facts['model_type']}; expected one of "
                              f"{names} or {', '.join(ALIASES)}")
        chosen += [m for m in hit if m not in chosen]
    if fused:
        warnings.warn(f"targets: {facts['model_type']} fuses these projections, so the whole fused module "
                      f"is adapted: {', '.join(dict.fromkeys(fused))}", stacklevel=3)
    return chosen


def canonical_targets(model_or_config: Any, wanted) -> list[str]:
    """The selected modules under the canonical names of linear_shapes (Llama-style, or GPT-2's), for the
    planner's activation model: a fused qkv_proj counts as q_proj, k_proj, v_proj."""
    cfg = model_config(model_or_config)
    canon = tuple(linear_shapes(cfg))
    out: list[str] = []
    for m in _select(arch.facts(cfg), wanted):
        last = m["path"].split(".")[-1]
        if m["name"] in canon:
            names = [m["name"]]
        elif last in canon:
            names = [last]
        else:
            names = [k for k, v in LLAMA_ALIASES.items() if last in v and (k in ATTENTION) == _is_attention(m)
                     and k in canon]
        out += [n for n in names if n not in out]
    return out


def _present_names(model) -> set[str] | None:
    """Target names that exist in a live model (suffixes of Linear/Conv1D leaves), or None for a config."""
    if not hasattr(model, "named_modules"):
        return None
    names = set()
    for full, mod in model.named_modules():
        if hasattr(mod, "weight") and type(mod).__name__ in ("Linear", "Conv1D", "Linear8bitLt", "Linear4bit"):
            parts = full.split(".")
            names.update(".".join(parts[-k:]) for k in range(1, len(parts) + 1))
    return names


def target_modules(model_or_config: Any, wanted=("q_proj", "k_proj", "v_proj")) -> list[str]:
    """Resolve requested targets to this architecture's module names (peft matches them by suffix).

    `wanted` holds Llama-style names (q_proj, ..., down_proj: aliases for the architecture's own, fused
    ones included), the architecture's own names (c_attn, qkv_proj, experts.gate_up_proj), or
    attention / mlp / all-linear (every Linear/Conv1D in the decoder layers, i.e. all but the LM head,
    plus every expert of a mixture-of-experts layer). Unknown names raise ConfigError naming `targets`.
    """
    chosen = _select(_facts(model_or_config), wanted)
    out = list(dict.fromkeys(m["name"] for m in chosen))
    present = _present_names(model_or_config)
    if present is not None:  # a live model: check the names really exist (e.g. a custom variant)
        missing = [m["name"] for m in chosen if m["kind"] != "experts" and m["name"] not in present]
        if missing:
            raise ConfigError(f"targets={missing[0]!r}: not a Linear module of this model; it has "
                              f"{', '.join(sorted(p for p in present if '.' not in p))}")
    return out


# ---------------------------------------------------------------- peft config and counts

def build_lora_config(settings: LoraSettings, model_or_config: Any):
    """peft LoraConfig for CAUSAL_LM with this architecture's target names; rsLoRA / DoRA per variant.
    Expert stacks (3-D parameters) go to peft's target_parameters, every expert adapted."""
    from peft import LoraConfig

    settings.validate()
    names = target_modules(model_or_config, settings.targets)   # warns about fused modules once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen = _select(_facts(model_or_config), settings.targets)
    experts = [m["name"] for m in chosen if m["kind"] == "experts"]
    if experts and settings.variant == "dora":
        raise ConfigError(f"variant='dora' with targets={','.join(settings.targets)}: peft has no DoRA for "
                          f"expert weights ({', '.join(experts)}); use lora/rslora or attention targets")
    if experts and settings.dropout:
        raise ConfigError(f"dropout={settings.dropout!r} with targets={','.join(settings.targets)}: peft cannot apply "
                          f"dropout to expert weights ({', '.join(dict.fromkeys(experts))}); expected dropout=0, "
                          "or attention-only targets")
    modules = [n for n in names if n not in experts]
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=modules or None,
        target_parameters=list(dict.fromkeys(experts)) or None,
        bias="none",
        task_type="CAUSAL_LM",
        use_rslora=settings.variant == "rslora",  # scale alpha/sqrt(r) instead of alpha/r
        use_dora=settings.variant == "dora",
        fan_in_fan_out=any(m["kind"] == "conv1d" for m in chosen),  # Conv1D stores weights transposed
    )


def apply_lora(model, settings: LoraSettings):
    """Wrap a loaded model with peft; returns the PeftModel (only adapter weights trainable)."""
    from peft import get_peft_model

    return get_peft_model(model, build_lora_config(settings, model))


def adapter_shapes(model_config_or_name: Any, settings: LoraSettings) -> dict[str, tuple[int, ...]]:
    """Every tensor of the saved adapter (names as peft's save_pretrained writes them) -> shape.
    An expert stack gets rank x experts (peft's ParamWrapper); a module with several adapted stacks
    nests one wrapper per stack (`experts.base_layer.lora_A` for all but the last)."""
    settings.validate()
    f = _facts(model_config_or_name)
    with warnings.catch_warnings():   # counting is no reason to repeat target_modules' warning
        warnings.simplefilter("ignore")
        chosen = _select(f, settings.targets)
    out: dict[str, tuple[int, ...]] = {}
    by_owner: dict[str, list[dict]] = {}
    for m in chosen:
        owner = m["path"].rsplit(".", 1)[0] if m["kind"] == "experts" else m["path"]
        by_owner.setdefault(owner, []).append(m)
    for owner, ms in by_owner.items():
        for j, m in enumerate(ms):
            r = settings.rank * m["experts"]
            key = owner + ".base_layer" * (len(ms) - 1 - j)
            for i in range(m["count"]):
                base = f"base_model.model.{f['layer_prefix']}.{i}.{key}"
                out[f"{base}.lora_A.weight"] = (r, m["in"])
                out[f"{base}.lora_B.weight"] = (m["out"], r)
                if settings.variant == "dora":
                    out[f"{base}.lora_magnitude_vector"] = (m["out"],)
    return out


def trainable_params(model_config_or_name: Any, settings: LoraSettings) -> int:
    """LoRA A (r x in) + B (out x r) per targeted module per layer, x experts for an expert stack;
    DoRA adds a magnitude per out-feature."""
    return sum(math.prod(s) for s in adapter_shapes(model_config_or_name, settings).values())


def adapter_tensors(model_config_or_name: Any, settings: LoraSettings) -> int:
    return len(adapter_shapes(model_config_or_name, settings))


def adapter_bytes(model_config_or_name: Any, settings: LoraSettings, dtype_bytes: int = 4) -> int:
    """Size of adapter_model.safetensors: tensor data plus the JSON header safetensors writes
    (8-byte length, then the header padded to 8 bytes; tensors laid out in name order)."""
    if dtype_bytes not in (1, 2, 4, 8):
        raise ConfigError(f"dtype_bytes={dtype_bytes!r}: expected one of 1, 2, 4, 8")
    shapes = adapter_shapes(model_config_or_name, settings)
    dtype = {1: "F8_E4M3", 2: "BF16", 4: "F32", 8: "F64"}[dtype_bytes]
    header, offset = {}, 0
    for name in sorted(shapes):
        n = math.prod(shapes[name]) * dtype_bytes
        header[name] = {"dtype": dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps({"__metadata__": {"format": "pt"}, **header}, separators=(",", ":"))
    return 8 + -(-len(text) // 8) * 8 + offset


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


# ---------------------------------------------------------------- tables (counts from configs, as frames)
# Plain arithmetic over the functions above, kept here so a notebook shows a count without computing it.

def paper_settings_table(model: Any = "llama-3.1-8b") -> "pd.DataFrame":
    """One row per PAPER_SETTINGS entry on `model`: the LoraConfig peft gets (r, alpha, dropout, targets),
    its output scale alpha / r, the trainable parameters and the fp32 adapter file size in MB."""
    import pandas as pd

    rows = []
    for p in PAPER_SETTINGS:
        s = LoraSettings(rank=p["rank"], alpha=p["alpha"], dropout=p["dropout"])
        c = build_lora_config(s, model)
        rows.append(dict(setting=p["name"], r=c.r, alpha=c.lora_alpha, dropout=c.lora_dropout, scale=c.lora_alpha / c.r,
                         targets=",".join(sorted(c.target_modules)), trainable=trainable_params(model, s),
                         adapter_MB=adapter_bytes(model, s) / 1e6))
    return pd.DataFrame(rows)


def shipped_models_table(targets=("q_proj", "k_proj", "v_proj"), rank: int = 8) -> "pd.DataFrame":
    """Every shipped config: architecture type, layers, the modules `targets` resolves to there and the
    trainable parameters at `rank` (column trainable_r<rank>)."""
    import pandas as pd

    s = LoraSettings(rank=rank, targets=targets)
    rows = []
    for m in shipped_models():
        cfg = model_config(m)
        rows.append({"model": m, "type": cfg["model_type"], "layers": n_layers(cfg),
                     "targets": ",".join(target_modules(cfg, s.targets)), f"trainable_r{rank}": trainable_params(cfg, s)})
    return pd.DataFrame(rows)


def settings_table(model: Any, settings: list[LoraSettings]) -> "pd.DataFrame":
    """Per setting on `model`: the config arithmetic's trainable count beside peft's own count on the meta
    device (the two must agree), and the fp32 adapter size in kB."""
    import pandas as pd

    return pd.DataFrame([dict(rank=s.rank, variant=s.variant, trainable=trainable_params(model, s),
                              peft_on_meta=trainable_params_meta(model, s), adapter_kB=adapter_bytes(model, s) / 1e3)
                         for s in settings])
