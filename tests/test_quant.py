"""Quantization analysis: storage against the formats' theory, round-trip error within the bounds the
formats guarantee (like bitsandbytes' own tests: mean error and the tail), and agreement with a
model that bitsandbytes really loaded."""
from __future__ import annotations

import pytest
import torch

from finlora_utils import quant

# Largest gap between neighbouring code values (in units of the block absmax); round-to-nearest
# can miss by at most half of it.
NF4_CODE = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
            0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]
FP4_CODE = [0.0, 0.0052, 0.1667, 0.25, 0.3333, 0.5, 0.6667, 1.0]


def _half_gap(code):
    code = sorted(code)
    return max(b - a for a, b in zip(code, code[1:])) / 2


@pytest.fixture(scope="module")
def gauss():
    return torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("scheme,theory", [("int8", 8 + 32 / 1024), ("nf4", 4.5), ("fp4", 4.5),
                                           ("nf4-dq", 4 + 8 / 64 + 32 / (64 * 256)), ("fp4-dq", 4.127)])
def test_storage_bits_per_param_match_theory(gauss, scheme, theory):
    q = quant.quantize(gauss, scheme)
    assert abs(quant.theoretical_bits(scheme, 1024) - theory) < 1e-3
    # the only excess over theory: the 16-entry (and 256-entry) code tables stored per tensor
    assert 0 <= q.bits_per_param - quant.theoretical_bits(scheme, 1024) < 0.01


@pytest.mark.parametrize("scheme,mean_abs,rel_fro", [
    ("nf4", (0.068, 0.078), (0.088, 0.096)),     # NF4 is information-optimal for N(0,1): lowest error
    ("fp4", (0.090, 0.102), (0.115, 0.128)),
    ("nf4-dq", (0.068, 0.078), (0.088, 0.096)),  # double quant barely changes the error
    ("int8", (0.0, 0.008), (0.0, 0.010)),
])
def test_round_trip_error_mean(gauss, scheme, mean_abs, rel_fro):
    w_hat = quant.dequantize(quant.quantize(gauss, scheme))
    err = (w_hat - gauss).abs()
    assert mean_abs[0] < err.mean().item() < mean_abs[1]
    e = quant.weight_error(gauss, w_hat)
    assert rel_fro[0] < e["rel_fro"] < rel_fro[1]
    assert e["cosine"] > 0.99


@pytest.mark.parametrize("scheme,code", [("nf4", NF4_CODE), ("fp4", FP4_CODE)])
def test_round_trip_error_tail_is_bounded_per_block(gauss, scheme, code):
    w_hat = quant.dequantize(quant.quantize(gauss, scheme))
    blocks = gauss.reshape(-1, 64)
    err = (w_hat.reshape(-1, 64) - blocks).abs()
    bound = blocks.abs().amax(dim=1, keepdim=True) * _half_gap(code) * 1.001 + 1e-6
    assert (err <= bound).all()
    assert (err > 0.5 * bound).any()   # the bound is tight: some weights land mid-gap


def test_int8_error_tail_is_half_a_step_per_row(gauss):
    w_hat = quant.dequantize(quant.quantize(gauss, "int8"))
    step = gauss.abs().amax(dim=1, keepdim=True) / 127
    assert ((w_hat - gauss).abs() <= step * 0.5 + gauss.abs().amax(dim=1, keepdim=True) * 2 ** -10).all()


def test_bad_scheme_names_the_parameter():
    with pytest.raises(ValueError, match=r"^scheme='int4': expected one of int8, nf4"):
        quant.quantize(torch.zeros(64, 64), "int4")


@pytest.mark.parametrize("precision,double_quant,scheme", [("nf4", True, "nf4-dq"), ("int8", False, "int8")])
def test_storage_table_matches_a_model_bitsandbytes_loaded(precision, double_quant, scheme):
    from finlora_utils import models

    ref, _ = models.load_model("tiny-random-llama", "fp32")
    loaded, _ = models.load_model("tiny-random-llama", precision, double_quant=double_quant)
    unq = loaded.get_input_embeddings().weight.element_size()
    row = quant.storage_table(ref, ("bf16", scheme), unquantized_bytes=unq).set_index("scheme").loc[scheme]
    # same bytes up to a few code tables / scalars per layer
    assert abs(row.total_bytes - quant.loaded_bytes(loaded)) < 4096
    assert row.unquantized_params > row.quantized_params   # tiny: the 49152-row embedding dominates


def test_layer_errors_rank_the_formats():
    from finlora_utils import models

    model, _ = models.load_model("tiny-random-llama", "fp32")
    df = quant.layer_errors(model, ("int8", "nf4", "fp4"), layers=[0])
    assert set(df.module) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    err = df.groupby("scheme").rel_fro.mean()
    assert err["int8"] < err["nf4"] < err["fp4"]
    s = quant.error_sample(model.model.layers[0].mlp.up_proj.weight, "nf4", n=1000)
    assert s.shape == (1000,) and abs(s.mean()) < 0.05


def _q4_1(w0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's Q4_1 round trip (blocks of 32 along a row: min, d = (max - min) / 15); returns (w, d)."""
    b = w0.reshape(w0.shape[0], -1, 32)
    lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
    d = (hi - lo) / 15
    q = torch.clamp(torch.round((b - lo) / d), 0, 15)
    return (lo + q * d).reshape(w0.shape), d.expand_as(b).reshape(w0.shape)


def test_continuous_reference_removes_the_q4_1_grid_and_stays_within_its_step():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(64, 128, generator=g) * 0.02
    w, d = _q4_1(w0)
    torch.testing.assert_close(quant.source_step(w), d, rtol=1e-4, atol=1e-7)
    assert quant.levels_per_block(w) <= 16 < 30 < quant.levels_per_block(w0)
    ref = quant.continuous_reference(w, seed=1)
    assert quant.levels_per_block(ref) > 30
    assert ((ref - w).abs() <= d / 2 + 1e-7).all() and not torch.equal(ref, w)
    with pytest.raises(ValueError, match="multiple of 32"):
        quant.source_step(torch.zeros(4, 48))

    layer = torch.nn.Module()
    layer.q_proj = torch.nn.Linear(128, 64, bias=False)
    layer.q_proj.weight.data = w
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([layer])
    df = quant.source_vs_continuous(model, ("int8", "nf4", "nf4-dq"), seed=0)
    assert list(df.scheme) == ["int8", "nf4", "nf4-dq"] and (df.levels_source <= 16).all()
    summ = quant.source_effect_summary(df)
    assert (summ.rel_fro_source > 0).all() and (summ.rel_fro_continuous > 0).all()
    assert summ.ratio.tolist() == pytest.approx((summ.rel_fro_source / summ.rel_fro_continuous).tolist())
    text = quant.source_effect_sentence(summ, float(df.levels_source.mean()))
    assert "a 4-bit grid" in text and f"{summ.rel_fro_source[1]:.4f}" in text


def test_error_histogram_is_a_density_per_scheme_of_the_named_projection():
    from finlora_utils import models

    model, _ = models.load_model("tiny-random-llama", "fp32")
    name = quant.projection_weights(model)[0][0]
    hist = quant.error_histogram(model, name, ["int8", "nf4"], seed=0, bins=40)
    assert list(hist.columns) == ["bin_center", "int8", "nf4"] and len(hist) == 40
    width = hist.bin_center[1] - hist.bin_center[0]
    assert (hist[["int8", "nf4"]].sum() * width).tolist() == pytest.approx([1.0, 1.0])   # densities over [-1, 1]
    assert hist["nf4"].std() < hist["int8"].std()   # int8's errors are a narrow spike, NF4's spread out
    with pytest.raises(KeyError):
        quant.error_histogram(model, "no.such.proj", ["int8"])
