"""ollimg.runtime.mlx_math: the multiply-and-add exp, SiLU and attention used on MLX's Linux CPU
backend agree with numpy's exp and MLX's own ops (which Apple's GPU and CPU keep using)."""

import sys

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'mlx[cpu]' on Linux)")
nn = pytest.importorskip("mlx.nn")

from ollimg.runtime import mlx_math  # noqa: E402

pytestmark = pytest.mark.mlx


@pytest.fixture(autouse=True)
def on_cpu():
    previous = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(previous)


def test_exp_is_float32_exact_over_its_range_and_zero_below():
    x = np.concatenate([np.linspace(-86.99, 88, 200_001, dtype=np.float32), [-87.0, -100.0, -np.inf]]).astype(np.float32)
    got = np.array(mlx_math._exp(mx.array(x)))
    want = np.exp(x[:-3].astype(np.float64))
    assert np.max(np.abs(got[:-3] - want) / want) < 3e-7  # float32 rounding is 6e-8
    assert got[-3:].tolist() == [0.0, 0.0, 0.0]


def test_silu_matches_mlx():
    x = mx.array(np.random.default_rng(0).normal(0, 6, (64, 300)).astype(np.float32))
    assert float(mx.max(mx.abs(mlx_math.silu(x) - nn.silu(x)))) < 1e-5
    half = x.astype(mx.bfloat16)
    assert mlx_math.silu(half).dtype == mx.bfloat16


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
def test_attention_matches_mlx_fast(masked, chunked, monkeypatch):
    rng = np.random.default_rng(1)
    q, k, v = (mx.array(rng.normal(0, 1, (2, 3, 40, 16)).astype(np.float32)) for _ in range(3))
    mask = mx.array(np.arange(40)[None, None, None, :] < np.array([40, 29])[:, None, None, None]) if masked else None
    if chunked:
        monkeypatch.setattr(mlx_math, "_SCORES", 2 * 3 * 40 * 7)  # 7 queries at a time
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    got = mlx_math.attention(q, k, v, 0.25, mask)
    assert got.shape == want.shape and float(mx.max(mx.abs(got - want))) < 1e-6


def test_the_multiply_and_add_paths_are_taken_on_linux_cpu_only():
    assert mlx_math._slow_exp() == (sys.platform == "linux")
