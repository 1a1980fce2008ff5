"""Architecture facts from the real module tree: what LoRA can target, the shapes, the parameter counts.

The architecture is instantiated from its config on the meta device (no weights, no memory), and its
decoder layers are read as they are: fused projections (Phi-3 `qkv_proj` / `gate_up_proj`, GPT-NeoX
`query_key_value`, GPT-2's Conv1D `c_attn`), biases, and mixture-of-experts weights stored as one 3-D
parameter per projection (transformers 5: `experts.gate_up_proj` of shape experts x out x in) all
come out right without a family table. `facts(cfg)` returns plain data (a JSON-able dict), so the
planner can use it without torch: facts of the shipped configs are stored in
finlora_utils/arch_facts.json (regenerate with `python -m finlora_utils.arch --write-shipped`;
tests/test_arch.py checks it is current).

Facts of one architecture:
  modules    every weight in the decoder layers LoRA can adapt: {"name": the shortest suffix that picks
             it out, "path": its path inside a layer, "kind": linear | conv1d | experts, "in", "out",
             "experts": stacked experts (1 for a plain layer), "bias", "count": how many layers have it}
  params     parameter counts of everything else: embeddings (before the layers), layers_other (norms,
             routers, biases ... inside the layers, excluding module weights), final (after the layers),
             head (an untied LM head; 0 when tied)
  layer_prefix  where the layers live ("model.layers", "transformer.h"), for adapter tensor names
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from functools import lru_cache
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
SHIPPED_FACTS = Path(__file__).resolve().parent / "arch_facts.json"
# Keys of a config.json that describe a checkpoint, not the architecture.
_NOT_ARCH = ("_name_or_path", "architectures", "transformers_version", "quantization_config", "torch_dtype",
             "dtype", "auto_map")


class ArchError(ValueError):
    """The config does not describe a causal LM transformers can build; message starts with `model=`."""


def config_key(cfg: dict) -> str:
    """Stable hash of the architecture-relevant part of a config dict."""
    arch = {k: v for k, v in cfg.items() if k not in _NOT_ARCH}
    return hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def _shipped() -> dict:
    return json.loads(SHIPPED_FACTS.read_text()) if SHIPPED_FACTS.exists() else {}


def facts(cfg: dict) -> dict:
    """Architecture facts of a config dict (see the module docstring); torch is imported only for
    configs whose facts are not shipped."""
    key = config_key(cfg)
    hit = _shipped().get(key)
    return hit if hit is not None else _facts_cached(key, json.dumps(cfg, sort_keys=True, default=str))


@lru_cache(maxsize=64)
def _facts_cached(_key: str, cfg_json: str) -> dict:
    return from_model(meta_model(json.loads(cfg_json)))


def meta_model(cfg: dict):
    """The architecture on the meta device: real module tree, no storage."""
    import warnings

    import torch
    from huggingface_hub.errors import StrictDataclassError   # transformers' typed configs raise it for a bad field
    from transformers import AutoConfig, AutoModelForCausalLM

    # a deep copy: transformers' config classes rewrite nested dicts (rope_scaling) in place
    cfg = {k: v for k, v in json.loads(json.dumps(cfg, default=str)).items() if k not in _NOT_ARCH}
    mt = cfg.pop("model_type", None)
    if not mt:
        raise ArchError(f"model={cfg.get('name', '?')!r}: config has no model_type")
    try:
        hf_cfg = AutoConfig.for_model(mt, **cfg)
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_config(hf_cfg, trust_remote_code=False)
    except (ValueError, KeyError, AssertionError, TypeError, StrictDataclassError) as e:
        raise ArchError(f"model_type={mt!r}: transformers cannot build a causal LM from this config "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e


def _layers(model):
    """(prefix, ModuleList) of the decoder layers: the longest ModuleList in the model."""
    import torch

    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) and (best is None or len(mod) > len(best[1])):
            best = (name, mod)
    if best is None:
        raise ArchError(f"model_type={model.config.model_type!r}: no decoder layer list found")
    return best


def _short_names(paths: list[str]) -> dict[str, str]:
    """Shortest dotted suffix of each path that no other path ends with (peft matches by suffix)."""
    out = {}
    for p in paths:
        parts = p.split(".")
        for k in range(1, len(parts) + 1):
            cand = ".".join(parts[-k:])
            if not any(q != p and (q == cand or q.endswith("." + cand)) for q in paths):
                out[p] = cand
                break
        else:
            out[p] = p
    return out


def from_model(model) -> dict:
    """Facts of a built model (meta or real; a peft wrapper is unwrapped first)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    prefix, layers = _layers(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    entries: dict[tuple, dict] = {}
    in_modules: set[int] = set()
    for layer in layers:
        for path, mod in layer.named_modules():
            if isinstance(mod, (torch.nn.Linear, Conv1D)):
                w = mod.weight
                # Conv1D stores (in, out), Linear (out, in)
                fin, fout = (w.shape[0], w.shape[1]) if isinstance(mod, Conv1D) else (w.shape[1], w.shape[0])
                kind, n_exp, bias = ("conv1d" if isinstance(mod, Conv1D) else "linear"), 1, mod.bias is not None
                in_modules.update(id(p) for p in mod.parameters(recurse=False))
                _add(entries, path, kind, fin, fout, n_exp, bias)
                continue
            for pname, p in mod.named_parameters(recurse=False):
                if p.dim() == 3:   # experts stacked as (experts, out, in): transformers 5 MoE layers
                    in_modules.add(id(p))
                    _add(entries, f"{path}.{pname}" if path else pname, "experts", p.shape[2], p.shape[1],
                         p.shape[0], False)
    layer_ids = {id(p) for p in layers.parameters()}
    order = [n for n, _ in model.named_modules()]
    layers_at = order.index(prefix)
    counts = dict(embeddings=0, layers_other=0, final=0, head=0)
    emb_params = {id(p) for p in model.get_input_embeddings().parameters()}
    for name, p in model.named_parameters():   # tied weights appear once, as embeddings
        if id(p) in head_params and id(p) not in emb_params:
            counts["head"] += p.numel()
        elif id(p) in layer_ids:
            counts["layers_other"] += 0 if id(p) in in_modules else p.numel()
        else:
            owner = name.rsplit(".", 1)[0]
            before = owner in order and order.index(owner) < layers_at
            counts["embeddings" if before else "final"] += p.numel()
    short = {}
    for experts in (False, True):   # modules go to peft's target_modules, expert stacks to target_parameters
        paths = sorted({e["path"] for e in entries.values() if (e["kind"] == "experts") == experts})
        for p, n in _short_names(paths).items():
            # an expert stack is named with its module ("experts.down_proj"), as peft's target_parameters
            short[p] = n if not experts or "." in n else ".".join(p.split(".")[-2:])
    modules = [dict(e, name=short[e["path"]]) for e in entries.values()]
    return {"model_type": model.config.model_type, "n_layers": len(layers), "layer_prefix": prefix,
            "tied": head is not None and not head_params.isdisjoint(emb_params),
            "modules": modules, "params": counts}


def _add(entries: dict, path: str, kind: str, fin: int, fout: int, n_exp: int, bias: bool) -> None:
    key = (path, kind, int(fin), int(fout), int(n_exp), bias)
    if key in entries:
        entries[key]["count"] += 1
    else:
        entries[key] = {"path": path, "kind": kind, "in": int(fin), "out": int(fout), "experts": int(n_exp),
                        "bias": bias, "count": 1}


def total_params(f: dict) -> int:
    """All parameters of the architecture (tied weights once)."""
    mods = sum((m["in"] * m["out"] * m["experts"] + (m["out"] if m["bias"] else 0)) * m["count"] for m in f["modules"])
    return mods + sum(f["params"].values())


# ---------------------------------------------------------------- CLI: regenerate the shipped facts

def shipped_facts() -> dict:
    """Facts of every config under model_configs/, keyed by config_key."""
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        if path == SHIPPED_FACTS:
            continue
        cfg = json.loads(path.read_text())
        key = config_key(cfg)
        out[key] = dict(from_model(meta_model(cfg)), config=path.stem)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finlora_utils.arch", description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", help="a config.json or a model directory holding one")
    ap.add_argument("--write-shipped", action="store_true", help=f"regenerate {SHIPPED_FACTS.name}")
    args = ap.parse_args(argv)
    if args.write_shipped:
        from .results import write_json

        write_json(SHIPPED_FACTS, shipped_facts())
        print(f"wrote {SHIPPED_FACTS}")
        return 0
    path = Path(args.config or "")
    path = path / "config.json" if path.is_dir() else path
    if not args.config or not path.is_file():
        print(f"error: config={args.config!r}: expected a config.json or a model directory holding one "
              "(or --write-shipped)", file=sys.stderr)
        return 2
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ArchError(f"a JSON {type(cfg).__name__}, expected a model's config.json (an object)")
        f = facts(cfg)
    except (ValueError, TypeError, KeyError, ArchError) as e:   # JSON, UTF-8 and config field errors
        print(f"error: {path}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(f, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
