"""LoRA setup: target modules per architecture, LoraConfig builders, counts from a config alone."""
from __future__ import annotations

import json

import pytest

from finlora_utils import lora
from finlora_utils.config import ConfigError, LoraSettings

QKV = ("q_proj", "k_proj", "v_proj")


@pytest.mark.parametrize("name", ["llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct",
                                  "meta-llama/Meta-Llama-3.1-8B-Instruct", "Llama-3.1-8B"])
def test_paper_trainable_counts_from_config(name):
    # FinLoRA's table: Llama-3.1-8B with q/k/v targets -> 4.72M trainable at r8, 2.36M at r4
    assert lora.trainable_params(name, LoraSettings(rank=8, targets=QKV)) == 4_718_592
    assert lora.trainable_params(name, LoraSettings(rank=4, targets=QKV)) == 2_359_296


@pytest.mark.parametrize("name,settings", [
    ("smollm2-135m", LoraSettings(rank=8)),
    ("qwen2.5-0.5b", LoraSettings(rank=4, targets="all-linear")),
    ("gpt2", LoraSettings(rank=8, targets="attention", variant="dora")),
    ("tiny-random-llama", LoraSettings(rank=16, targets="mlp", variant="rslora")),
])
def test_arithmetic_count_matches_peft_on_meta_device(name, settings):
    assert lora.trainable_params(name, settings) == lora.trainable_params_meta(name, settings)


def test_target_modules_per_architecture():
    assert lora.target_modules("llama-3.1-8b") == list(QKV)
    assert lora.target_modules("mistral-7b", "attention") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert lora.target_modules("qwen2.5-7b", "mlp") == ["gate_proj", "up_proj", "down_proj"]
    # GPT-2 fuses q/k/v into c_attn; its two c_proj are told apart by their parent
    assert lora.target_modules("gpt2", QKV) == ["c_attn"]
    assert lora.target_modules("gpt2", "all-linear") == ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]
    assert len(lora.target_modules("smollm2-135m", "all-linear")) == 7


def test_unknown_target_names_targets_and_existing_modules():
    with pytest.raises(ConfigError, match=r"^targets='c_attn'.*q_proj.*down_proj"):
        lora.target_modules("llama-3.1-8b", ["q_proj", "c_attn"])
    with pytest.raises(ConfigError, match=r"^targets="):
        lora.target_modules("gpt2", ["gate_proj"])


def test_hub_id_for_short_names():
    assert lora.hub_id("llama-3.1-8b") == "meta-llama/Llama-3.1-8B-Instruct"
    assert lora.hub_id("qwen2.5-7b") == "Qwen/Qwen2.5-7B-Instruct"
    assert lora.hub_id("embedded") is None and lora.hub_id("meta-llama/Llama-3.1-8B") is None


def test_unknown_model_names_model_and_choices():
    with pytest.raises(ConfigError, match=r"^model='no-such-model'.*llama-3.1-8b"):
        lora.model_config("no-such-model")


def test_shipped_configs_agree_with_the_kit_models():
    from finlora_utils import models

    tiny = lora.model_config("tiny-random-llama")
    assert {k: tiny[k] for k in models.TINY_CONFIG} == models.TINY_CONFIG
    emb_cfg = models.embedded_model_dir() / "config.json"
    real = json.loads(emb_cfg.read_text())
    ours = lora.model_config("embedded")
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "tie_word_embeddings"):
        assert ours[k] == real[k], k


def test_build_lora_config_variants():
    s = LoraSettings(rank=8, alpha=32, dropout=0.1, targets=QKV, variant="rslora")
    c = lora.build_lora_config(s, "llama-3.1-8b")
    assert (c.r, c.lora_alpha, c.lora_dropout, c.use_rslora, c.use_dora) == (8, 32, 0.1, True, False)
    assert set(c.target_modules) == set(QKV) and c.task_type == "CAUSAL_LM"
    d = lora.build_lora_config(LoraSettings(rank=4, variant="dora"), "gpt2")
    assert d.use_dora and d.fan_in_fan_out and set(d.target_modules) == {"c_attn"}


def test_live_model_count_and_adapter_bytes_on_disk(tmp_path):
    from finlora_utils import models

    model, _ = models.load_model("tiny-random-llama", "fp32")
    s = LoraSettings(rank=8, targets="attention")
    peft_model = lora.apply_lora(model, s)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == lora.trainable_params("tiny-random-llama", s)
    peft_model.save_pretrained(tmp_path)
    on_disk = (tmp_path / "adapter_model.safetensors").stat().st_size
    assert abs(lora.adapter_bytes("tiny-random-llama", s) - on_disk) / on_disk < 0.03
    with pytest.raises(ConfigError, match=r"^targets='gate_proj'"):
        lora.target_modules(peft_model.get_base_model().model.layers[0].self_attn, ["gate_proj"])


def test_paper_settings_table_counts_the_paper_numbers():
    t = lora.paper_settings_table("llama-3.1-8b")
    assert len(t) == len(lora.PAPER_SETTINGS) and list(t.setting) == [p["name"] for p in lora.PAPER_SETTINGS]
    r8, r4 = t.iloc[0], t.iloc[2]   # 2025 configs: 16-bit r8, 4-bit r4
    assert (r8.trainable, r4.trainable) == (4_718_592, 2_359_296)
    assert r8.scale == 2.0 and t.iloc[3].scale == 4.0 and r8.targets == "k_proj,q_proj,v_proj"
    assert r8.adapter_MB == pytest.approx(4 * 4_718_592 / 1e6, rel=5e-3)   # fp32 tensors plus the header


def test_shipped_models_and_settings_tables():
    with pytest.warns(UserWarning, match="fuses"):   # gpt2's fused c_attn
        t = lora.shipped_models_table("q_proj,k_proj,v_proj", rank=4)
    assert list(t.model) == lora.shipped_models() and "trainable_r4" in t
    llama = t[t.model == "llama-3.1-8b"].iloc[0]
    assert llama.layers == 32 and llama.trainable_r4 == 2_359_296
    settings = [LoraSettings(rank=4), LoraSettings(rank=8, variant="dora")]
    s = lora.settings_table("tiny-random-llama", settings)
    assert list(s["rank"]) == [4, 8] and list(s.variant) == ["lora", "dora"]
    assert list(s.trainable) == list(s.peft_on_meta) == [lora.trainable_params("tiny-random-llama", x) for x in settings]
