"""Export a (merged) model as GGUF for llama.cpp / Ollama, written with the `gguf` package.

    python -m finlora_utils export gguf merged/fpb-r4 --out fpb-r4.Q8_0.gguf --type q8_0
    python -m finlora_utils.export gguf MODEL --out FILE.gguf [--type f32|f16|q8_0|q4_0]

MODEL is a transformers folder (what `merge` writes) or a kit name (`embedded`). Llama-family models
(model_type llama / mistral with a byte-level BPE tokenizer: SmolLM2, Llama 3, ...) are supported; for
other architectures run llama.cpp's convert_hf_to_gguf.py on the merged folder.

What follows llama.cpp's convert_hf_to_gguf.py (LlamaModel, Model.get_vocab_base): tensor names come
from gguf's own TensorNameMap for MODEL_ARCH.LLAMA; q/k projection rows are permuted into llama.cpp's
rotary layout; 1-D tensors and norms stay F32; a tied LM head is not written (llama.cpp reuses
token_embd); Q8_0 / Q4_0 blocks come from gguf.quants (a row that is not a multiple of the 32-wide
block falls back to F16, as there). Tokenizer metadata: tokenizer.ggml.model gpt2, the pre-tokenizer
name llama.cpp derives from a hash of the tokenization of its check text, tokens with their types
(CONTROL for special added tokens), merges, special token ids and the chat template (gguf.SpecialVocab).
The kit adds `finlora.provenance`: the merge record (base, adapter, git commit) when there is one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from functools import lru_cache
from hashlib import sha256
from pathlib import Path

from .errors import cli_entry

TYPES = ("f32", "f16", "q8_0", "q4_0")
SUPPORTED = ("llama", "mistral")
# llama.cpp's check text for the BPE pre-tokenizer, and the names of a few hashes of its tokenization
# (convert_hf_to_gguf.py get_vocab_base_pre); an unknown tokenizer gets "default" and a warning.
CHECK_TEXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 '
              '3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
              '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
              '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


class ExportError(ValueError):
    """A model or option the exporter cannot handle; the message names it and what is expected."""


def _qtypes(name: str):
    import gguf

    G, F = gguf.GGMLQuantizationType, gguf.LlamaFileType
    return {"f32": (G.F32, F.ALL_F32), "f16": (G.F16, F.MOSTLY_F16), "q8_0": (G.Q8_0, F.MOSTLY_Q8_0),
            "q4_0": (G.Q4_0, F.MOSTLY_Q4_0)}[name]


def _permute(w, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's LlamaModel.permute: q/k rows from HF's half-split rotary layout to interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(cfg: dict) -> float:
    rp = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or ({k: v for k, v in rp.items() if k != "rope_theta"} if rp else None)
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise ExportError(f"rope_scaling={scaling!r}: this exporter writes plain RoPE only; use llama.cpp's "
                          "convert_hf_to_gguf.py for scaled-RoPE models (Llama 3.1's llama3 rope)")
    return float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))


@lru_cache(maxsize=4)   # exporting one model at several types builds its vocabulary once
def _vocab(model_dir: Path, vocab_size: int):
    """(tokens, token types, pre-tokenizer name) as llama.cpp's Model.get_vocab_base builds them."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    tj = model_dir / "tokenizer.json"
    model_type = json.loads(tj.read_text()).get("model", {}).get("type") if tj.is_file() else None
    if model_type != "BPE" or "▁" in "".join(list(tok.get_vocab())[:2000]):
        raise ExportError(f"{model_dir}: tokenizer is not byte-level BPE (tokenizer.json model {model_type!r}); "
                          "this exporter writes gpt2-style BPE vocabularies only")
    chk = sha256(str(tok.encode(CHECK_TEXT)).encode()).hexdigest()
    pre = PRE_TOKENIZERS.get(chk)
    if pre is None:
        warnings.warn(f"{model_dir}: unknown BPE pre-tokenizer (hash {chk[:12]}); writing 'default', which "
                      "llama.cpp may tokenize differently", stacklevel=3)
        pre = "default"
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        t = reverse.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif t in added:
            special = decoder[i].special or (t.startswith("<|") and t.endswith("|>"))
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
            tokens.append(t)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types, pre


def _tensors(model_dir: Path):
    """(name, float32 numpy array) of every tensor in the folder's safetensors files."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{model_dir}: no .safetensors weights (only safetensors are read)")
    for f in files:
        with safe_open(f, framework="pt", device="cpu") as st:
            for name in st.keys():
                yield name, st.get_tensor(name).float().numpy()


def export_gguf(model: str | Path, out: str | Path, qtype: str = "f16", overwrite: bool = False) -> dict:
    """Write `model` (a transformers folder or kit name) to the GGUF file `out`; returns a summary."""
    import gguf
    import numpy as np

    from .models import resolve_model_path
    from .results import git_commit, shareable_path

    if qtype not in TYPES:
        raise ExportError(f"type={qtype!r}: expected one of {', '.join(TYPES)}")
    model_dir = Path(resolve_model_path(str(model)))
    out = Path(out)
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"model={str(model)!r}: expected a folder with config.json and safetensors weights "
                          "(what `merge` writes) or the kit name 'embedded'")
    if out.suffix != ".gguf":
        raise ExportError(f"out={str(out)!r}: expected a file name ending in .gguf")
    if out.exists() and not overwrite:
        raise ExportError(f"out={str(out)!r} exists; pass --overwrite to replace it")
    cfg = json.loads((model_dir / "config.json").read_text())
    mt = cfg.get("model_type")
    if mt not in SUPPORTED:
        raise ExportError(f"model_type={mt!r}: GGUF export supports {', '.join(SUPPORTED)} (Llama family); for "
                          "other architectures run llama.cpp's convert_hf_to_gguf.py on the merged folder")
    if cfg.get("quantization_config"):
        raise ExportError(f"{model_dir}/config.json: the weights are stored quantized; export the merged, "
                          "unquantized folder")
    n_layers, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    h = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or h // n_head
    qt, ftype = _qtypes(qtype)
    tied = cfg.get("tie_word_embeddings", False)

    w = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(model_dir.name)
    w.add_block_count(n_layers)
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(h)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(head_dim)
    if head_dim != h // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(ftype)
    tokens, types, pre = _vocab(model_dir, cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    merge_rec = model_dir / "finlora_merge.json"
    prov = {"source": shareable_path(model), "git_commit": git_commit(), "type": qtype}   # a GGUF travels
    if merge_rec.is_file():
        rec = json.loads(merge_rec.read_text())
        prov.update(base_model=rec.get("base_model"), adapter={k: rec["adapter"].get(k) for k in ("path", "sha256", "config")})
    w.add_string("finlora.provenance", json.dumps(prov, default=str))

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    counts: dict[str, int] = {}
    for name, data in _tensors(model_dir):
        if name.endswith(".rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ExportError(f"{model_dir}: tensor {name!r} has no GGUF name for a Llama model")
        if name.endswith("q_proj.weight"):
            data = _permute(data, n_head, n_head)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, n_head, n_kv)
        t = gguf.GGMLQuantizationType.F32 if data.ndim <= 1 or new.endswith("_norm.weight") else qt
        try:
            packed = gguf.quants.quantize(data, t) if t != gguf.GGMLQuantizationType.F32 else data.astype(np.float32)
        except gguf.QuantError:   # a row not a multiple of the block size
            t = gguf.GGMLQuantizationType.F16
            packed = gguf.quants.quantize(data, t)
        w.add_tensor(new, packed, raw_dtype=t)
        counts[t.name] = counts.get(t.name, 0) + 1

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        w.write_header_to_file(path=tmp)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"path": str(out), "bytes": out.stat().st_size, "type": qtype, "tensor_types": counts,
            "tokenizer_pre": pre, "tied_head": tied}


@cli_entry
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finlora_utils export", description="Export a model for other runtimes.")
    sub = ap.add_subparsers(dest="format", required=True, metavar="FORMAT")
    g = sub.add_parser("gguf", help="GGUF for llama.cpp / Ollama (Llama-family models)",
                       description="Write a merged (or any Llama-family transformers) model as a GGUF file.")
    g.add_argument("model", help="a transformers folder (e.g. what `merge` wrote) or the kit name 'embedded'")
    g.add_argument("--out", required=True, help="the .gguf file to write")
    g.add_argument("--type", default="f16", choices=TYPES, help="tensor type of the 2-D weights (default f16)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = ap.parse_args(argv)
    info = export_gguf(args.model, args.out, args.type, overwrite=args.overwrite)
    types = ", ".join(f"{k} x{v}" for k, v in info["tensor_types"].items())
    print(f"wrote {info['path']} ({info['bytes'] / 2**20:.1f} MiB; tensors {types}; pre-tokenizer {info['tokenizer_pre']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
