"""Architecture facts from the real module tree: the kit's arithmetic (trainable parameters, adapter bytes,
planner weights) equals what peft / bitsandbytes build, on tiny random models of ten architectures, and
each trains two steps at nf4."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from finlora_utils import arch, lora, memory, models
from finlora_utils.config import ConfigError, LoraSettings

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, max_position_embeddings=128,
             pad_token_id=0, bos_token_id=1, eos_token_id=2)
TINY = {
    "llama": SMALL,
    "mistral": SMALL,
    "qwen2": SMALL,
    "olmo2": SMALL,
    "gemma2": dict(SMALL, head_dim=16),
    "phi3": SMALL,
    "mixtral": dict(SMALL, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=64),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=256, bos_token_id=1, eos_token_id=2),
    "gpt_neox": dict(SMALL),
}
# peft has no dropout on expert weights: settings that reach them use dropout=0
SETTINGS = [LoraSettings(rank=4, targets=("q_proj", "k_proj", "v_proj")), LoraSettings(rank=2, targets="all-linear", dropout=0),
            LoraSettings(rank=3, targets="attention", variant="rslora"), LoraSettings(rank=2, targets="mlp", dropout=0),
            LoraSettings(rank=2, targets="attention", variant="dora")]


def tiny_config(mt: str) -> dict:
    return dict(TINY[mt], model_type=mt)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each tiny architecture saved once as safetensors (random weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out = {}
    for mt in TINY:
        cfg = dict(TINY[mt])
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **cfg))
        d = tmp_path_factory.mktemp(mt)
        model.save_pretrained(d)
        out[mt] = d
    return out


def _quiet():
    warnings.simplefilter("ignore")


@pytest.mark.parametrize("mt", sorted(TINY))
def test_counts_equal_peft_and_the_live_model(mt, saved, tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(mt)
    f = arch.facts(cfg)
    base = AutoModelForCausalLM.from_pretrained(saved[mt], dtype=torch.float32)
    assert arch.total_params(f) == sum(p.numel() for p in base.parameters())
    # planner weights at 16 bits with 1 byte per element = parameter count, split as bitsandbytes splits it
    w = memory.weight_bytes(cfg, 16, base_bytes=1)
    assert w["quantized_weights"] + w["unquantized"] == sum(p.numel() for p in base.parameters())
    for s in SETTINGS:
        with warnings.catch_warnings():
            _quiet()
            pm = get_peft_model(AutoModelForCausalLM.from_pretrained(saved[mt], dtype=torch.float32),
                                lora.build_lora_config(s, cfg))
        trainable, _ = pm.get_nb_trainable_parameters()
        assert trainable == lora.trainable_params(cfg, s), (mt, s.targets)
        d = tmp_path / f"{mt}-{s.rank}"
        pm.save_pretrained(d)
        assert (d / "adapter_model.safetensors").stat().st_size == lora.adapter_bytes(cfg, s), (mt, s.targets)


@pytest.mark.parametrize("mt", sorted(TINY))
def test_planner_4bit_weights_equal_bitsandbytes(mt, saved):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    q = AutoModelForCausalLM.from_pretrained(saved[mt], quantization_config=models.bnb_config("nf4", compute_dtype=torch.float32),
                                             device_map={"": "cpu"}, dtype=torch.float32)
    packed = consts = 0
    for m in q.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            packed += m.weight.numel()
            consts += m.weight.quant_state.absmax.numel() * 4
    unq = sum(p.numel() for p in q.parameters() if not isinstance(p, bnb.nn.Params4bit))
    w = memory.weight_bytes(tiny_config(mt), 4, base_bytes=1)
    assert (w["quantized_weights"], w["quant_constants"], w["unquantized"]) == (packed, consts, unq)


@pytest.mark.parametrize("mt", sorted(TINY))
def test_two_training_steps(mt, saved):
    from transformers import AutoModelForCausalLM

    # every architecture here trains at nf4 (Qwen2-MoE's 1-output shared_expert_gate included: only a
    # no-grad 4-bit forward trips bitsandbytes' CPU kernel on such a layer)
    qcfg = models.bnb_config("nf4", compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(saved[mt], dtype=torch.float32, quantization_config=qcfg,
                                                 device_map={"": "cpu"})
    models.fix_bnb_cpu(model)
    with warnings.catch_warnings():
        _quiet()
        pm = lora.apply_lora(model, LoraSettings(rank=4, targets="all-linear", dropout=0))
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2)
    torch.manual_seed(0)
    x = torch.randint(3, 256, (2, 16))
    losses = []
    for _ in range(2):
        loss = pm(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(not torch.equal(a, b.detach()) for a, b in zip(before, params)) == len(params)
    assert losses[1] < losses[0]


def test_fused_and_expert_names():
    with pytest.warns(UserWarning, match="q_proj -> qkv_proj"):
        assert lora.target_modules(tiny_config("phi3"), ("q_proj", "v_proj")) == ["qkv_proj"]
    with pytest.warns(UserWarning, match="query_key_value"):
        assert lora.target_modules(tiny_config("gpt_neox"), "q_proj,o_proj") == ["query_key_value", "dense"]
    assert lora.target_modules(tiny_config("gpt_neox"), "down_proj") == ["dense_4h_to_h"]
    # every expert's weights, under peft's target_parameters names; the router stays frozen
    assert lora.target_modules(tiny_config("mixtral"), "mlp") == ["experts.gate_up_proj", "experts.down_proj"]
    c = lora.build_lora_config(LoraSettings(rank=2, targets="all-linear", dropout=0), tiny_config("qwen2_moe"))
    assert set(c.target_parameters) == {"experts.gate_up_proj", "experts.down_proj"}
    assert "shared_expert_gate" in c.target_modules and "lm_head" not in c.target_modules
    with pytest.raises(ConfigError, match="^variant='dora'"):
        lora.build_lora_config(LoraSettings(rank=2, targets="mlp", variant="dora"), tiny_config("mixtral"))
    with pytest.raises(ConfigError, match="^dropout=0.05.*experts.gate_up_proj"):
        lora.build_lora_config(LoraSettings(rank=2, targets="all-linear"), tiny_config("mixtral"))
    with pytest.raises(ConfigError, match=r"^targets='c_fc'.*qkv_proj"):
        lora.target_modules(tiny_config("phi3"), "c_fc")


def test_planner_runs_on_every_architecture():
    for mt in TINY:
        p = memory.plan(tiny_config(mt), bits=4, rank=4, targets="all-linear", seq_len=64, device="cpu", dropout=0)
        assert p.total_bytes > 0 and p.trainable_params == lora.trainable_params(
            tiny_config(mt), LoraSettings(rank=4, targets="all-linear", dropout=0))


def test_shipped_facts_are_current():
    assert arch._shipped() == arch.shipped_facts()
