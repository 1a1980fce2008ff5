"""Load part of a base model: the architecture on the meta device, and only the wanted tensors read from
the safetensors files, quantized at the model's precision. Everything else stays on meta (no memory).

A pipeline rank needs its own stage only; `models.load_model` would first materialize and quantize the
whole model (a 70B model on every rank). Here a rank reads, casts and quantizes just its stage's tensors,
through the same bitsandbytes parameter classes and the same module replacement transformers uses, so a
stage's weights equal the whole model's (tests/test_parallel.py checks the numbers).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from .models import bnb_config, finish_loading, load_dtype, load_tokenizer, resolve_model_path


def load_partial(name: str, precision: str, keep: Callable[[str], bool], double_quant: bool = False,
                 device: str = "cpu", compute_dtype: torch.dtype | None = None):
    """(model, tokenizer) with only the parameters whose names `keep` accepts materialized on `device`.

    Names are the model's own (`model.layers.3.self_attn.q_proj.weight`); a tied output head that `keep`
    wants is read from the input embedding's tensor. Buffers (rotary frequencies) are real everywhere:
    they are computed, not loaded, and tiny. The meta remainder is for the caller to cut away.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(name)
    tok = load_tokenizer(name)
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=False, token=os.environ.get("HF_TOKEN"))
    qcfg = bnb_config(precision, double_quant, compute_dtype)
    dtype = load_dtype(precision, device, compute_dtype)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    if qcfg is not None:
        from transformers.integrations.bitsandbytes import replace_with_bnb_linear
        from transformers.quantizers.base import get_keys_to_not_convert

        replace_with_bnb_linear(model, modules_to_not_convert=get_keys_to_not_convert(model), quantization_config=qcfg)
    tied = _tied_sources(model, cfg)
    wanted = [n for n, _ in model.named_parameters(remove_duplicate=False) if keep(n)]
    retie = {head: src for head, src in tied.items() if head in wanted and src in wanted}
    for pname, tensor in _read(Path(path), [n for n in wanted if n not in retie], tied):
        _place(model, pname, tensor, device, dtype)
    for head, src in retie.items():   # both ends here: one matrix, as the checkpoint stores it
        _set(model, head, model.get_parameter(src))
    return finish_loading(model, tok)


def resident_parameters(model: torch.nn.Module) -> int:
    """Elements of the parameters that hold memory (not on meta); a 4-bit weight counts its packed bytes."""
    return sum(p.numel() for p in model.parameters() if p.device.type != "meta")


def _tied_sources(model, cfg) -> dict[str, str]:
    """{output head weight: input embedding weight} when the checkpoint stores the tied matrix once."""
    if not getattr(cfg, "tie_word_embeddings", False):
        return {}
    names = {id(p): n for n, p in model.named_parameters()}
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None:
        return {}
    head = next(n for n, p in model.named_parameters(remove_duplicate=False) if p is out.weight)
    return {head: names.get(id(inp.weight), head)}


def _read(path: Path, wanted: list[str], tied: dict[str, str]):
    """(parameter name, tensor) for each wanted name, read from the safetensors shard that holds it."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    shard_of = (json.loads(index.read_text())["weight_map"] if index.exists()
                else {k: "model.safetensors" for k in _keys(path / "model.safetensors")})
    by_file: dict[str, list[tuple[str, str]]] = {}
    for pname in wanted:
        key = pname if pname in shard_of else tied.get(pname, pname)
        if key not in shard_of:
            raise KeyError(f"{path}: no tensor {pname!r} in the checkpoint")
        by_file.setdefault(shard_of[key], []).append((pname, key))
    for file, pairs in by_file.items():
        with safe_open(str(path / file), framework="pt", device="cpu") as f:
            for pname, key in pairs:
                yield pname, f.get_tensor(key)


def _keys(file: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt", device="cpu") as f:
        return list(f.keys())


def _place(model, pname: str, tensor: torch.Tensor, device: str, dtype: torch.dtype) -> None:
    """Set one parameter from its checkpoint tensor, quantizing as transformers' bitsandbytes loader does."""
    old = model.get_parameter(pname)
    cls = type(old).__name__
    if cls == "Params4bit":
        import bitsandbytes as bnb

        new = bnb.nn.Params4bit(tensor.to(dtype), requires_grad=False, **old.__dict__).to(device)
    elif cls == "Int8Params":
        import bitsandbytes as bnb

        kw = {k: v for k, v in old.__dict__.items() if k != "SCB"}
        new = bnb.nn.Int8Params(tensor.to(dtype), requires_grad=False, **kw).to(device)
    else:
        # copy=True: a zero-copy view would keep the whole mmapped shard file resident (as in models.load_model)
        new = torch.nn.Parameter(tensor.to(device=device, dtype=old.dtype, copy=True), requires_grad=old.requires_grad)
    _set(model, pname, new)


def _set(model, pname: str, param: torch.nn.Parameter) -> None:
    mod_name, _, attr = pname.rpartition(".")
    setattr(model.get_submodule(mod_name), attr, param)
