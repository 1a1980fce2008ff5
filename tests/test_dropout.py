"""finlora_utils.dropout: the packed-mask LoRA dropout keeps each element with probability 1 - p,
independently, scaled by 1 / (1 - p); a seed fixes the mask; the kit's CPU models use it."""
from __future__ import annotations

import math

import pytest
import torch

from finlora_utils import dropout
from finlora_utils.config import LoraSettings, TrainConfig

N = 1 << 20


def _kept(p: float, seed: int = 0, shape=(N,)) -> torch.Tensor:
    torch.manual_seed(seed)
    d = dropout.PackedDropout(p).train()
    return d(torch.ones(shape)) != 0


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_fraction_is_one_minus_p_within_binomial_noise(p):
    kept = _kept(p).double()
    sigma = math.sqrt(p * (1 - p) / N)   # binomial standard error of the kept fraction
    assert abs(kept.mean().item() - (1 - p)) < 5 * sigma
    # the two 32-bit halves of one 64-bit draw are independent: pairs both kept (1-p)^2 of the time
    both = (kept[0::2] * kept[1::2]).mean().item()
    q = (1 - p) ** 2
    assert abs(both - q) < 5 * math.sqrt(q * (1 - q) / (N // 2))


def test_kept_values_are_scaled_and_gradients_follow_the_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 96, requires_grad=True)
    y = dropout.PackedDropout(0.1).train()(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.9)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.9)
    assert y.dtype == x.dtype and y.shape == x.shape


def test_same_seed_same_mask_eval_is_identity_and_p_is_checked():
    assert torch.equal(_kept(0.1, seed=3, shape=(7, 33)), _kept(0.1, seed=3, shape=(7, 33)))
    assert not torch.equal(_kept(0.1, seed=3, shape=(7, 33)), _kept(0.1, seed=4, shape=(7, 33)))
    x = torch.randn(5, 6)
    assert dropout.PackedDropout(0.3).eval()(x) is x
    with pytest.raises(ValueError, match="p=1.0"):
        dropout.PackedDropout(1.0)


def test_cpu_lora_model_draws_packed_masks_and_says_so(tmp_path):
    from finlora_utils import train

    cfg = TrainConfig(model="tiny-random-llama", tasks="fpb", precision="bf16", output_dir=str(tmp_path),
                      lora=LoraSettings(rank=4, alpha=8.0, dropout=0.1, targets=("q_proj", "v_proj")))
    model, _ = train.build_model(cfg)
    packed = [m for m in model.modules() if isinstance(m, dropout.PackedDropout)]
    layers = model.get_base_model().config.num_hidden_layers
    assert len(packed) == 2 * layers and all(m.p == 0.1 for m in packed)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert dropout.kernel(model) == dropout.KERNEL
    no_drop = TrainConfig(model="tiny-random-llama", tasks="fpb", precision="bf16", output_dir=str(tmp_path),
                          lora=LoraSettings(rank=4, alpha=8.0, dropout=0.0))
    assert dropout.kernel(train.build_model(no_drop)[0]) == dropout.TORCH
