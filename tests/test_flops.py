"""finlora_utils.flops: FLOP counts against a hand count on the tiny config, and the peak probe."""
from __future__ import annotations

import pytest
import torch

from finlora_utils import flops
from finlora_utils.config import LoraSettings

TINY = "tiny-random-llama"   # 2 layers, hidden 64, 4 heads x 16, 2 kv heads, MLP 128, vocab 49152
QKV = LoraSettings(rank=4, targets=("q_proj", "k_proj", "v_proj"))
# per layer, in x out: q 64x64 + k 64x32 + v 64x32 + o 64x64 + gate 64x128 + up 64x128 + down 128x64
PROJ_PER_TOKEN = 2 * 2 * (4096 + 2048 + 2048 + 4096 + 8192 + 8192 + 8192)      # 147456
LORA_PER_TOKEN = 2 * 2 * 4 * ((64 + 64) + (64 + 32) + (64 + 32))                 # 5120
HEAD_PER_POS = 2 * 64 * 49152                                                   # 6291456
ATTN_PER_PAIR = 4 * 2 * 64                                                      # QK + PV, 2 layers, 4x16 dims


def test_per_token_counts_match_a_hand_count():
    assert flops.projection_flops_per_token(TINY) == PROJ_PER_TOKEN == 147456
    assert flops.lora_flops_per_token(TINY, QKV) == LORA_PER_TOKEN
    assert flops.lora_flops_per_token(TINY, None) == 0
    assert flops.head_flops(TINY, 3) == 3 * HEAD_PER_POS
    # causal: 3 new tokens see 1, 2, 3 keys; after 5 cached ones 6, 7, 8
    assert flops.attention_flops(TINY, 3) == 6 * ATTN_PER_PAIR
    assert flops.attention_flops(TINY, 3, past_tokens=5) == 21 * ATTN_PER_PAIR


def test_train_step_counts_backward_without_frozen_weight_gradients():
    # one 3-token example with 1 label, one 5-token example with 2 labels
    got = flops.train_flops(TINY, [(3, 1), (5, 2)], QKV)
    fwd = 8 * PROJ_PER_TOKEN + (6 + 15) * ATTN_PER_PAIR + 3 * HEAD_PER_POS + 8 * LORA_PER_TOKEN
    assert got["forward"] == fwd
    # frozen parts: forward + input gradient (2x); LoRA: + weight gradients (3x)
    assert got["total"] == 2 * (8 * PROJ_PER_TOKEN + 21 * ATTN_PER_PAIR + 3 * HEAD_PER_POS) + 3 * 8 * LORA_PER_TOKEN
    assert got["total"] == 40252416   # 2 * (1179648 + 10752 + 18874368) + 122880
    assert got["lora"] == 3 * 8 * LORA_PER_TOKEN and got["head"] == 6 * HEAD_PER_POS


def test_training_with_a_shared_prefix_counts_it_once_per_micro_batch():
    ex = [dict(input_ids=[1, 2, 3, 4, 5], labels=[-100, -100, -100, 4, 5]),
          dict(input_ids=[1, 2, 3, 6], labels=[-100, -100, -100, 6]),
          dict(input_ids=[9, 2], labels=[-100, 2])]
    plan = [[[0, 1], [2]]]   # one step: a micro-batch of two sharing [1, 2, 3], one of a single example
    assert flops.planned_examples(ex, plan) == [(5, 2), (4, 1), (2, 1)]
    shared = flops.planned_examples(ex, plan, share_prefix=True)
    assert shared == [(3, 0, 0), (2, 3, 2), (1, 3, 1), (2, 1)]
    padded, packed = flops.train_flops(TINY, flops.planned_examples(ex, plan), QKV), flops.train_flops(TINY, shared, QKV)
    # the second example's 3 prefix tokens are not run again: their projections and their 6 (query, key) pairs
    assert padded["projections"] - packed["projections"] == 2 * 3 * PROJ_PER_TOKEN
    assert padded["attention"] - packed["attention"] == 2 * 6 * ATTN_PER_PAIR and padded["head"] == packed["head"]


def test_score_counts_the_shared_prefix_once_and_extra_label_tokens():
    ctxs = [[1, 2, 3, 4], [1, 2, 5]]
    conts = [[[7], [8, 9]], [[7], [8, 9]]]
    segs, heads = flops.score_segments(ctxs, conts)
    # prefix [1, 2] once; own tokens after it; label [8, 9] feeds 8 after each full context
    assert segs == [(2, 0), (2, 2), (1, 4), (1, 2), (1, 3)] and heads == 4
    plain, plain_heads = flops.score_segments(ctxs, conts, share_prefix=False)
    assert plain == [(4, 0), (1, 4), (3, 0), (1, 3)] and plain_heads == 4
    shared = flops.score_flops(TINY, ctxs, conts)["total"]
    assert shared < flops.score_flops(TINY, ctxs, conts, share_prefix=False)["total"]
    assert shared == 7 * PROJ_PER_TOKEN + (3 + 7 + 5 + 3 + 4) * ATTN_PER_PAIR + 4 * HEAD_PER_POS


def test_generate_counts_prefill_then_one_decode_step_per_token():
    g = flops.generate_flops(TINY, [3, 4], [2, 0])   # the second prompt generated nothing: no work counted
    assert g["total"] == 4 * PROJ_PER_TOKEN + (6 + 4) * ATTN_PER_PAIR + 2 * HEAD_PER_POS


def test_projection_count_matches_torch_flop_counter():
    """The shapes the count uses are the model's: torch's own counter over a forward of the tiny model
    (projections as mm; the LM head at one position) agrees exactly."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    from finlora_utils.models import resolve_model_path

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(TINY), dtype=torch.float32).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(input_ids=torch.arange(1, 6)[None], logits_to_keep=1)
    mm = sum(v for op, v in counter.get_flop_counts()["Global"].items() if str(op).startswith("aten.mm"))
    assert mm == 5 * PROJ_PER_TOKEN + HEAD_PER_POS


def test_pipeline_bubble_and_mfu():
    assert flops.pipeline_bubble(2, 4) == pytest.approx(1 / 5)
    assert flops.pipeline_bubble(1, 8) == 0.0
    with pytest.raises(ValueError, match="micro_batches=0"):
        flops.pipeline_bubble(2, 0)
    assert flops.mfu(50e9, 2.0, 100e9) == pytest.approx(0.25)


def test_measure_peak_reports_every_shape(monkeypatch):
    # a capped peak is another machine's limit, so it says so (the env var itself is not set here: oneDNN reads it
    # once, at its first use in the process, and every later test would run capped)
    monkeypatch.setattr(flops.hardware, "isa_caps", lambda: {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    peak = flops.measure_peak(TINY, tokens=16, dtype=torch.float32, threads=1, min_time_s=0.01, repeats=1)
    assert peak["dtype"] == "float32" and peak["threads"] == 1
    assert peak["isa_caps"]["ONEDNN_MAX_CPU_ISA"] == "AVX2" and "ONEDNN_MAX_CPU_ISA=AVX2;" in flops.peak_summary(peak)
    assert "2048^3" in peak["flops_per_s"] and any(k.startswith("q_proj 16x64x64") for k in peak["flops_per_s"])
    assert peak["peak"] == max(peak["flops_per_s"].values()) > 1e8
    assert torch.get_num_threads() >= 1
    assert flops.compute_dtype("fp32") == torch.float32 and flops.compute_dtype("bf16") == torch.bfloat16
