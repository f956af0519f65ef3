"""The fp8 matmul of fp8 models (torch_backend.scaled_linear): its numerics, checked on the CPU
(torch._scaled_mm runs there too), and when it is used: only on CUDA with fp8 tensor cores and
OLLIMG_FP8_MATMUL not off. On a GPU, tests/parity/test_cuda_parity.py runs it in the pipeline."""

from __future__ import annotations

import pytest
import torch

from ollimg import config
from ollimg.errors import InvalidInput
from ollimg.runtime import torch_backend
from ollimg.runtime.torch_backend import FP8, Linear, fp8_matmul, scaled_linear


def quantized(out_features: int, in_features: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=gen)
    scale = w.abs().amax(dim=1) / 448.0
    return (w / scale[:, None]).to(FP8), scale


def test_scaled_linear_matches_the_dequantized_weights_within_fp8_precision():
    w8, scale = quantized(48, 64)
    x = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(1)).bfloat16() * 30
    bias = torch.randn(48).bfloat16()
    y = scaled_linear(x, w8, scale, bias)
    reference = torch.nn.functional.linear(x.float(), w8.float() * scale[:, None], bias.float())
    assert y.shape == (2, 7, 48) and y.dtype == torch.bfloat16
    error = ((y.float() - reference).norm() / reference.norm()).item()
    assert 1e-4 < error < 0.05  # activations are rounded to e4m3 (3 mantissa bits): a few percent
    # Each row has its own scale: a row 1000x larger than the others loses nothing to them.
    x[0, 0] *= 1000
    y = scaled_linear(x, w8, scale, None)
    reference = torch.nn.functional.linear(x.float(), w8.float() * scale[:, None])
    small = ((y[1].float() - reference[1]).norm() / reference[1].norm()).item()
    assert small < 0.05


def test_the_largest_values_stay_finite():
    """Each row's largest value lands just under 448 (e4m3's largest), never past it (NaN)."""
    w8, scale = quantized(32, 32, seed=2)
    for magnitude in (1e-3, 1.0, 448.0, 3e4):
        x = (torch.randn(64, 32, generator=torch.Generator().manual_seed(3)) * magnitude).bfloat16()
        y = scaled_linear(x, w8, scale, None)
        reference = x.float() @ (w8.float() * scale[:, None]).T
        assert torch.isfinite(y).all()
        assert ((y.float() - reference).norm() / reference.norm()).item() < 0.05


def test_used_only_on_cuda_and_not_when_off(monkeypatch):
    fp8_matmul.cache_clear()
    assert not fp8_matmul(torch.device("cpu"))
    layer = Linear(32, 48)
    layer.weight, layer.weight_scale = torch.nn.Parameter(quantized(48, 32)[0], requires_grad=False), quantized(48, 32)[1]
    layer.bias = None
    called = []
    monkeypatch.setattr(torch_backend, "scaled_linear", lambda *a: called.append(a))
    layer(torch.randn(3, 32).bfloat16())
    assert called == []  # CPU: dequantized per call
    monkeypatch.setenv("OLLIMG_FP8_MATMUL", "off")
    assert not config.fp8_matmul()
    monkeypatch.setenv("OLLIMG_FP8_MATMUL", "sometimes")
    with pytest.raises(InvalidInput, match="OLLIMG_FP8_MATMUL"):
        config.fp8_matmul()
