"""Prepacked inference weights: the same scores and texts as the plain path, training untouched, every module
restored, and the memory guard."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from finlora_utils import data, evaluate as ev, models, prepack

LABELS = list(data.get_task("fpb").labels)
PROMPTS = [data.format_prompt(data.get_task("fpb").instruction, t) for t in
           ("Profit rose .", "The company cut 300 jobs after a weak quarter and lowered its outlook for 2010 .",
            "Sales were flat .", "Operating loss widened to EUR 3 million from a profit", "x")]


def _load(precision):
    ok, why = prepack.supported(torch.float32 if precision == "fp32" else torch.bfloat16)
    if not ok:
        pytest.skip(f"{precision}: {why} (the kit runs the plain path there; nothing to compare)")
    return models.load_model("tiny-random-llama", precision=precision)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_scores_and_texts_match_the_plain_path(precision):
    model, tok = _load(precision)
    plain = ev.score_labels(model, tok, PROMPTS, LABELS, 2, prepack=False)
    packed = ev.score_labels(model, tok, PROMPTS, LABELS, 2, prepack=True)
    # Same oneDNN kernel family, weights only laid out differently: fp32 agrees to rounding, bf16 to its
    # 8-bit mantissa on a random model whose log-probabilities are all close together.
    np.testing.assert_allclose(packed, plain, atol=1e-4 if precision == "fp32" else 0.05)
    if precision == "fp32":
        assert (packed.argmax(1) == plain.argmax(1)).all()
        assert (ev.generate_texts(model, tok, PROMPTS, 2, 6, prepack=True)
                == ev.generate_texts(model, tok, PROMPTS, 2, 6, prepack=False))


def test_every_plain_linear_is_laid_out_and_restored():
    model, _ = _load("fp32")
    mods = prepack.candidates(model)
    n_linear = sum(1 for m in model.modules() if type(m) is torch.nn.Linear)
    assert len(mods) == n_linear > 0
    hooked = mods[0]
    own = hooked.forward          # a forward set on the instance (as accelerate's hooks do) must survive
    hooked.forward = own
    with prepack.prepacked(model) as info:
        assert info["layers"] == n_linear and info["bytes"] > 0 and not info["why"]
        assert all("forward" in m.__dict__ and m.forward is not own for m in mods)
    assert hooked.__dict__["forward"] is own
    assert all("forward" not in m.__dict__ for m in mods[1:])
    with pytest.raises(RuntimeError, match="boom"), prepack.prepacked(model):
        raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in mods[1:])


def test_a_forward_that_records_gradients_takes_the_plain_path():
    model, _ = _load("fp32")
    x = torch.randn(3, 5, model.config.hidden_size)
    lin = prepack.candidates(model)[0]
    lin.weight.requires_grad_(True)
    try:
        ref = torch.autograd.grad(lin(x).square().sum(), lin.weight)[0]
        with prepack.prepacked(model):
            got = torch.autograd.grad(lin(x).square().sum(), lin.weight)[0]
            with torch.no_grad():
                fast = lin(x)
    finally:
        lin.weight.requires_grad_(False)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(fast, torch.nn.functional.linear(x, lin.weight), rtol=1e-5, atol=1e-5)


def test_nothing_is_prepacked_beyond_the_memory_allowed():
    model, tok = _load("fp32")
    with prepack.prepacked(model, max_bytes=1) as info:
        assert info["layers"] == 0 and "would exceed" in info["why"] and "MiB" in info["why"]
        assert all("forward" not in m.__dict__ for m in prepack.candidates(model))
        scores = ev.score_labels(model, tok, PROMPTS[:2], LABELS, 2, prepack=False)
    assert scores.shape == (2, len(LABELS))


def test_quantized_layers_are_not_candidates():
    model, _ = models.load_model("tiny-random-llama", precision="nf4")
    names = {type(m).__name__ for m in prepack.candidates(model)}
    assert "Linear4bit" not in names
    assert all(type(m) is torch.nn.Linear for m in prepack.candidates(model))


def test_a_call_with_few_forwards_keeps_the_plain_layout():
    model, _ = _load("fp32")
    with prepack.prepacked(model, forwards=prepack.MIN_FORWARDS - 1) as info:
        assert info["layers"] == 0 and "too few" in info["why"]
        assert all("forward" not in m.__dict__ for m in prepack.candidates(model))
    with prepack.prepacked(model, forwards=prepack.MIN_FORWARDS) as info:
        assert info["layers"] > 0
    # decide() answers the same question without laying anything out
    assert prepack.decide(model, forwards=prepack.MIN_FORWARDS - 1)["layers"] == 0
    assert prepack.decide(model, forwards=prepack.MIN_FORWARDS) == info
    assert all("forward" not in m.__dict__ for m in prepack.candidates(model))


def test_a_lora_model_scores_the_same_with_its_base_layers_prepacked():
    from peft import LoraConfig, get_peft_model

    model, tok = _load("fp32")
    base = ev.score_labels(model, tok, PROMPTS, LABELS, 2, prepack=False)
    torch.manual_seed(0)   # init_lora_weights=False: B is random too, so the adapter changes every score
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    try:
        plain = ev.score_labels(peft_model, tok, PROMPTS, LABELS, 2, prepack=False)
        packed = ev.score_labels(peft_model, tok, PROMPTS, LABELS, 2, prepack=True)
    finally:
        peft_model.unload()
    assert np.abs(plain - base).max() > 1e-3            # the adapter's path still runs beside the packed base
    np.testing.assert_allclose(packed, plain, atol=1e-4)


def test_dense_and_packed_kernels_compute_x_times_w_transposed():
    ok, why = prepack.supported(torch.float32)
    if not ok:
        pytest.skip(why)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 5, 24, generator=g), torch.randn(40, 24, generator=g)
    want = torch.nn.functional.linear(x, w)
    for f in (prepack.dense_linear(w), prepack.packed_linear(w, rows_hint=15)):
        got = f(x)
        assert got.shape == (3, 5, 40)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grad = torch.randn(7, 40, generator=g)   # the input gradient g @ W, by oneDNN on W.T as it is (strided)
    torch.testing.assert_close(prepack.dense_linear(w.t())(grad), grad @ w, rtol=1e-5, atol=1e-5)
