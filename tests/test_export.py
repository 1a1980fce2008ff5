"""export gguf: the file reads back with gguf's reader and transformers' own GGUF loader."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from finlora_utils import export, models

PROMPTS = ["Instruction: What is the sentiment?\nInput: Sales fell 10%.\nAnswer: ",
           "Instruction: What is the sentiment?\nInput: The company raised its dividend.\nAnswer: "]
# relative error of the dequantized 2-D weights: exact, half precision, 8-bit and 4-bit blocks of 32
REL_ERR = {"f32": 0.0, "f16": 1e-3, "q8_0": 1e-2, "q4_0": 0.15}


@pytest.fixture(scope="module")
def tiny_dir():
    return models.tiny_model_dir()


@pytest.mark.slow
@pytest.mark.parametrize("qtype", export.TYPES)
def test_tensors_and_metadata_read_back(qtype, tiny_dir, tmp_path):
    import gguf
    from safetensors.torch import load_file

    out = tmp_path / f"m.{qtype}.gguf"
    assert export.main(["gguf", str(tiny_dir), "--out", str(out), "--type", qtype]) == 0
    r = gguf.GGUFReader(str(out))
    fields = r.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2" and fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert len(fields["tokenizer.ggml.tokens"].data) == 49152 and len(fields["tokenizer.ggml.merges"].data) > 40000
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 2 and "tokenizer.chat_template" in fields
    prov = json.loads(fields["finlora.provenance"].contents())
    # the file travels: its source is named inside the checkout, or by folder name, never by an absolute path
    assert prov["type"] == qtype and not Path(prov["source"]).is_absolute() and prov["source"].endswith(tiny_dir.name)
    cfg = json.loads((tiny_dir / "config.json").read_text())
    hf = load_file(tiny_dir / "model.safetensors")
    tensors = {t.name: t for t in r.tensors}
    assert "output.weight" not in tensors     # tied head: llama.cpp reuses token_embd
    assert len(tensors) == 2 + 9 * cfg["num_hidden_layers"]
    for name, ref in (("token_embd.weight", hf["model.embed_tokens.weight"]),
                      ("blk.1.ffn_down.weight", hf["model.layers.1.mlp.down_proj.weight"]),
                      ("blk.0.attn_v.weight", hf["model.layers.0.self_attn.v_proj.weight"])):
        t = tensors[name]
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ref.shape)
        err = np.linalg.norm(got - ref.numpy()) / np.linalg.norm(ref.numpy())
        assert err <= REL_ERR[qtype] + 1e-7, (name, err)
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


@pytest.mark.slow
def test_transformers_loader_gives_the_same_model(tiny_dir, tmp_path):
    """F32 round trip through transformers' GGUF loader: same token ids, same logits (q/k permutation,
    names, tied head and tokenizer all right)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export.export_gguf(tiny_dir, tmp_path / "m.gguf", "f32")
    g = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    gtok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    ref, tok = models.load_model(models.TINY, "fp32")
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt").input_ids
        assert torch.equal(gtok(p, return_tensors="pt").input_ids, ids)
        with torch.no_grad():
            assert torch.allclose(g(ids).logits, ref(ids).logits, atol=1e-5)


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_embd=64, n_layer=1, n_head=4, vocab_size=256)) \
        .save_pretrained(tmp_path / "gpt2")
    assert export.main(["gguf", str(tmp_path / "gpt2"), "--out", str(tmp_path / "x.gguf")]) == 2
    assert "model_type='gpt2'" in capsys.readouterr().err
    assert export.main(["gguf", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.gguf")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert export.main(["gguf", "tiny-random-llama", "--out", str(tmp_path / "x.bin")]) == 2
    assert ".gguf" in capsys.readouterr().err



@pytest.mark.slow
@pytest.mark.real_data
def test_embedded_model_f16_same_greedy_answers_on_fpb(real_data_dir, tmp_path):
    """The embedded SmolLM2 exported at F16 and read back by transformers' GGUF loader answers 20 FPB test
    prompts exactly as the safetensors model does (greedy, 3 tokens); last-position logits within 0.05.
    Slow: about 40 min wall (6 CPU-min) on the shared, overloaded 2-core build machine."""
    from transformers import AutoModelForCausalLM

    from finlora_utils import data

    prompts = data.load_task("fpb", split="test")["context"][:20]
    ref, tok = models.load_model(models.EMBEDDED, "fp32")
    export.export_gguf(models.EMBEDDED, tmp_path / "e.gguf", "f16")
    got = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="e.gguf", dtype=torch.float32).eval()

    def answers(model):
        outs, last = [], []
        with torch.no_grad():
            for p in prompts:
                ids = tok(p, return_tensors="pt")
                last.append(model(**ids).logits[0, -1])
                g = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
                outs.append(tok.decode(g[0, ids.input_ids.shape[1]:]))
        return outs, torch.stack(last)

    want, want_logits = answers(ref)
    have, have_logits = answers(got)
    assert have == want
    assert (have_logits - want_logits).abs().max() < 0.05
