"""SiLU and attention for the MLX components, fast on MLX's Linux CPU backend too.

That backend evaluates exp (and with it sigmoid, tanh and softmax) one float at a time, about 13x
slower than numpy's exp, where add and multiply are vectorised: on the built-in shapes model the
softmax of attention and the SiLU gates were most of a step (bench/README.md, "where MLX's CPU
time goes"). There, exp is computed here from multiplies and adds (Cephes' expf: range reduction
by ln 2 and a degree-5 polynomial, within 1e-7 relative, closer to exp than MLX's own), fused by
mx.compile into one kernel. Everywhere else (Apple's GPU and CPU) these are MLX's own ops.
"""

from __future__ import annotations

import math
import sys

import mlx.core as mx
import mlx.nn as nn

_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 in two parts: n * _LN2_HI is exact
_EXPF = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
_SCORES = 1 << 24  # attention scores held at once (64 MiB of float32): queries go in chunks past that


def _exp(x: mx.array) -> mx.array:
    """float32 exp from multiplies and adds (Cephes expf); 0 at and below -87 (exp(-87) is 1.6e-38)."""
    x = mx.clip(x, -87.0, 88.0)
    n = mx.floor(x * _LOG2E + 0.5)
    r = x - n * _LN2_HI - n * _LN2_LO  # x = n ln 2 + r, |r| <= ln 2 / 2
    p = mx.full(r.shape, _EXPF[0], dtype=mx.float32)
    for c in _EXPF[1:]:
        p = p * r + c
    two_n = mx.left_shift(n.astype(mx.int32) + 127, 23).view(mx.float32)  # 2^n from its exponent bits
    return mx.where(x > -87.0, (p * r * r + r + 1.0) * two_n, 0.0)


@mx.compile
def _silu(x: mx.array) -> mx.array:
    f = x.astype(mx.float32)
    return (f / (1.0 + _exp(-f))).astype(x.dtype)


@mx.compile
def _softmax(scores: mx.array) -> mx.array:
    e = _exp(scores - mx.max(scores, axis=-1, keepdims=True))
    return e / mx.sum(e, axis=-1, keepdims=True)


def _slow_exp() -> bool:
    return sys.platform == "linux" and mx.default_device() == mx.cpu


def silu(x: mx.array) -> mx.array:
    return _silu(x) if _slow_exp() else nn.silu(x)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None) -> mx.array:
    """mx.fast.scaled_dot_product_attention for (B, H, L, D) q, k, v (as many heads each) and a
    boolean key mask broadcast to (B, H, Lq, Lk) (True: attend) or None."""
    if not _slow_exp():
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    b, h, lq, _ = q.shape
    chunk = max(1, min(lq, _SCORES // max(1, b * h * k.shape[2])))
    kt = k.astype(mx.float32).swapaxes(-1, -2)
    out = []
    for start in range(0, lq, chunk):
        scores = (q[:, :, start:start + chunk].astype(mx.float32) * scale) @ kt
        if mask is not None:
            m = mask if mask.shape[-2] == 1 else mask[..., start:start + chunk, :]
            scores = mx.where(m, scores, -math.inf)
        out.append(_softmax(scores) @ v.astype(mx.float32))
    return (out[0] if len(out) == 1 else mx.concatenate(out, axis=2)).astype(q.dtype)
