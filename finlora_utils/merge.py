"""Merge a LoRA adapter into its base model: a plain transformers model folder anyone can load.

    python -m finlora_utils merge reports/runs/<run>/adapter --out merged/fpb-r4
    python -m finlora_utils.merge ADAPTER --out DIR [--base MODEL] [--dtype fp32|bf16|fp16] [--overwrite]

The base is always loaded unquantized from its own weights, whatever precision the adapter was trained
at: merging into a 4-bit or 8-bit base would round the small LoRA update away (a 4-bit step is far
larger than most of W + BA - W), so a QLoRA adapter is merged into the full-precision base it was
quantized from, as axolotl and Unsloth do. A base folder that is itself stored quantized (a
`quantization_config` in its config.json) is refused. The embedded model's full precision is its
dequantized GGUF (see README, "The embedded model").

The output holds model.safetensors (+ config, generation config), the tokenizer, README.md (a model card:
base model and its provenance, the adapter and how it was trained, how the merge was checked) and
finlora_merge.json (the same, machine-readable). The merge is checked before anything is written: the
merged model's logits on a probe prompt must equal base + adapter within `tolerance`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import cli_entry

DTYPES = ("fp32", "bf16", "fp16")
PROBE = ("Instruction: What is the sentiment of this news? Please choose an answer from "
         "{negative/neutral/positive}.\nInput: Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.\nAnswer: ")


class MergeError(ValueError):
    """A user mistake (missing adapter, quantized base, existing output); the message names it."""


def adapter_base(adapter_dir: Path) -> str:
    """The base model an adapter was trained on, as the kit names it (`embedded` for SmolLM2's
    embedded copy, whose recorded path is a cache folder). adapter_config.json names the hub id for the embedded
    copy as well; the kit's card says which of the two it was (an adapter without that card: the embedded one)."""
    from .artifacts import adapter_config, card_base
    from .models import EMBEDDED, EMBEDDED_HUB_ID, TINY, is_embedded_cache_folder

    cfg = adapter_config(adapter_dir)
    base = cfg.get("base_model_name_or_path") or ""
    card = card_base(adapter_dir) or ""
    if card == TINY:   # the kit's test model: peft recorded its cache folder
        return card
    if base == EMBEDDED_HUB_ID and card == EMBEDDED_HUB_ID:
        return EMBEDDED_HUB_ID   # trained on the hub's SmolLM2, not on the embedded copy
    if base in (EMBEDDED_HUB_ID, EMBEDDED) or (base and is_embedded_cache_folder(base)):
        return EMBEDDED
    if not base:
        raise MergeError(f"{adapter_dir / 'adapter_config.json'}: no base_model_name_or_path; pass --base")
    return base


def _card_text(path: Path) -> str | None:
    """The adapter's own card, with paths inside the checkout made relative (a base model in the kit's cache)."""
    from .paths import project_root
    from .results import relativize_text

    return relativize_text(path.read_text(encoding="utf-8"), project_root()) if path.is_file() else None


def _check_unquantized(base_path: str) -> None:
    cfg_path = Path(base_path) / "config.json"
    if cfg_path.is_file():
        q = json.loads(cfg_path.read_text()).get("quantization_config")
        if q:
            kind = q.get("quant_method", "quantized")
            bits = "4-bit" if q.get("load_in_4bit") else "8-bit" if q.get("load_in_8bit") else kind
            raise MergeError(f"base={base_path!r} is stored quantized ({kind}, {bits}): merging into it would round "
                             "the adapter away. Pass --base with the unquantized model it was quantized from.")


def _logits(model, tok, text: str):
    import torch

    with torch.no_grad():
        ids = tok(text, return_tensors="pt")
        return model(**ids).logits.float()


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str = "fp32",
                  overwrite: bool = False, tolerance: float = 1e-3) -> dict:
    """Merge `adapter` into its (unquantized) base and save to `out`; returns the provenance record.

    `tolerance`: largest allowed |logit difference| between base + adapter and the merged model on a probe
    prompt (fp32: ~1e-5 in practice; bf16/fp16 outputs are checked after the cast, so allow ~0.1)."""
    import torch
    from transformers import AutoModelForCausalLM

    from . import results
    from .artifacts import (ADAPTER_WEIGHTS, TASK_FILE, adapter_config, attach_adapter, read_task_record,
                            safetensors_adapter)
    from .data.sources import sha256_file
    from .models import load_tokenizer, quiet_progress, resolve_model_path

    adapter, out = Path(adapter), Path(out)
    if dtype not in DTYPES:
        raise MergeError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    if not tolerance >= 0:
        raise MergeError(f"tolerance={tolerance!r}: expected the largest |logit difference| to accept, >= 0")
    acfg = adapter_config(adapter)
    safetensors_adapter(adapter)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MergeError(f"out={str(out)!r} exists and is not empty; pass --overwrite to replace it")
    base = base or adapter_base(adapter)
    base_path = resolve_model_path(base)
    _check_unquantized(base_path)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    tok = load_tokenizer(base)
    # merge in fp32 (W + BA exactly as trained), cast once at the end
    with quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, use_safetensors=True,
                                                     trust_remote_code=False)
    peft_model = attach_adapter(model, adapter, base, is_trainable=False)
    peft_model.eval()
    expected = _logits(peft_model, tok, PROBE)
    merged = peft_model.merge_and_unload()
    merged.to(torch_dtype)
    diff = float((_logits(merged, tok, PROBE) - expected).abs().max())
    if not diff <= tolerance:
        raise MergeError(f"tolerance={tolerance}: merged logits differ from base + adapter by {diff:.3g} "
                         f"on the probe prompt (dtype={dtype}); raise tolerance for a 16-bit output")
    hub = acfg.get("base_model_name_or_path")
    record = {
        "created": results.now_iso(),
        "base_model": {"name": results.shareable_path(base) if Path(base).exists() else base,
                       "path": results.shareable_path(base_path) if Path(base_path).exists() else None,
                       "hub_id": results.shareable_path(hub) if hub and Path(hub).exists() else hub,
                       "loaded_as": "fp32, unquantized"},
        "adapter": {"path": results.shareable_path(adapter), "sha256": sha256_file(adapter / ADAPTER_WEIGHTS),
                    "config": {k: acfg.get(k) for k in ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules",
                                                        "target_parameters", "use_rslora", "use_dora")}},
        "training_card": _card_text(adapter / "README.md"),
        "tasks": (read_task_record(adapter) or {}).get("tasks"),   # labels and instruction (also in TASK_FILE)
        "dtype": dtype,
        "check": {"probe_max_abs_logit_diff": diff, "tolerance": tolerance},
        "git_commit": results.git_commit(),
        "environment": results.environment(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        with quiet_progress():
            merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(record), encoding="utf-8")
        results.write_json(tmp / "finlora_merge.json", record)
        if (adapter / TASK_FILE).is_file():   # the labels and instruction the merged model's prompts need
            shutil.copyfile(adapter / TASK_FILE, tmp / TASK_FILE)
        results.usual_permissions(tmp)   # mkdtemp and safetensors make it owner-only; a merged model is for sharing
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def model_card(record: dict) -> str:
    b, a, c = record["base_model"], record["adapter"], record["adapter"]["config"]
    env = record["environment"]
    targets = ", ".join(sorted(c.get("target_modules") or [])) or "-"
    if c.get("target_parameters"):
        targets += " + expert weights " + ", ".join(sorted(c["target_parameters"]))
    card = f"""---
library_name: transformers
base_model: {b['hub_id'] or b['name']}
tags: [finlora, lora, merged, finance]
---
# Merged LoRA model (FinLoRA study kit)

A LoRA adapter merged into its base model with `python -m finlora_utils merge` ({record['created']}).
Load it with plain transformers, no peft needed:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```

| | |
|---|---|
| base model | `{b['name']}` (recorded as `{b['hub_id']}`), loaded {b['loaded_as']} |
| adapter | `{a['path']}` (sha256 {a['sha256'][:16]}...) |
| LoRA | rank {c.get('r')}, alpha {c.get('lora_alpha')}, {'DoRA' if c.get('use_dora') else 'rsLoRA' if c.get('use_rslora') else 'LoRA'}, targets {targets} |
| saved as | {record['dtype']} safetensors |
| check | max abs logit difference to base + adapter on a probe prompt: {record['check']['probe_max_abs_logit_diff']:.2e} (tolerance {record['check']['tolerance']:g}) |
| made with | finlora_utils at git {record.get('git_commit') or 'unknown'}, torch {env.get('packages', {}).get('torch')}, transformers {env.get('packages', {}).get('transformers')}, peft {env.get('packages', {}).get('peft')} |

All of this is in `finlora_merge.json`.
"""
    if record.get("training_card"):
        body = record["training_card"].split("---", 2)[-1].strip() if record["training_card"].startswith("---") \
            else record["training_card"].strip()
        card += "\n## How the adapter was trained (its own card)\n\n" + body.replace("\n# ", "\n### ") + "\n"
    return card


@cli_entry
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finlora_utils merge",
                                 description="Merge a LoRA adapter into its unquantized base model (safetensors + tokenizer + model card).")
    ap.add_argument("adapter", help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    ap.add_argument("--out", required=True, help="output folder for the merged model")
    ap.add_argument("--base", help="base model (kit name, hub id or folder); default: the one the adapter records")
    ap.add_argument("--dtype", default="fp32", choices=DTYPES, help="dtype of the saved weights (default fp32)")
    ap.add_argument("--tolerance", type=float, default=None,
                    help="max |logit diff| to base + adapter on the probe prompt (default 1e-3 for fp32, 0.25 otherwise)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out")
    args = ap.parse_args(argv)
    tol = args.tolerance if args.tolerance is not None else (1e-3 if args.dtype == "fp32" else 0.25)
    rec = merge_adapter(args.adapter, args.out, base=args.base, dtype=args.dtype, overwrite=args.overwrite,
                        tolerance=tol)
    print(f"merged {args.adapter} into {rec['base_model']['name']} -> {args.out} ({args.dtype}; probe logits "
          f"within {rec['check']['probe_max_abs_logit_diff']:.2e} of base + adapter)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
