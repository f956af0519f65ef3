"""The FLUX.2 DiT on MLX (diffusers' Flux2Transformer2DModel numerics, our own code).

# Same as torch/transformer.py: the same classes, parameter names and split of the forward
# (`prepare` once per generation, `__call__` per step); see that file for the numerics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ollimg.runtime.mlx_backend import RMSNorm
from ollimg.runtime import mlx_math
from ollimg.runtime.mlx_math import silu
from ollimg.runtime.models.flux2 import layout
from ollimg.runtime.models.flux2.config import TransformerConfig


def layer_norm(x: mx.array, eps: float) -> mx.array:
    return mx.fast.layer_norm(x, None, None, eps)


def apply_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """x (B, L, H, D); cos, sin float32 (L, D/2): rotate interleaved pairs (x[2j], x[2j+1]) in float32."""
    b, l, h, d = x.shape
    pairs = x.astype(mx.float32).reshape(b, l, h, d // 2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return mx.stack([re * cos - im * sin, im * cos + re * sin], axis=-1).reshape(b, l, h, d).astype(x.dtype)


def attention(q, k, v, cos, sin) -> mx.array:
    """q, k, v (B, L, H, D), already q/k-normed -> (B, L, H * D)."""
    b, l, h, d = q.shape
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, H, L, D)
    out = mlx_math.attention(q, k, v, 1.0 / math.sqrt(d))
    return out.transpose(0, 2, 1, 3).reshape(b, l, h * d)


def modulate(x: mx.array, shift: mx.array, scale: mx.array, eps: float) -> mx.array:
    return (1 + scale) * layer_norm(x, eps) + shift


def heads(x: mx.array, head_dim: int) -> mx.array:
    return x.reshape(*x.shape[:-1], -1, head_dim)  # (B, L, H, D)


class FeedForward(nn.Module):
    """SwiGLU with the gate and the up projection fused in `linear_in` (gate first)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = mx.split(self.linear_in(x), 2, axis=-1)
        return self.linear_out(silu(gate) * up)


class JointAttention(nn.Module):
    """Attention over [text, image]: each stream has its own projections and q/k norms."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        d, hd = c.dim, c.attention_head_dim
        self.head_dim = hd
        self.to_q, self.to_k, self.to_v = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.to_out = [nn.Linear(d, d, bias=False)]
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.to_add_out = nn.Linear(d, d, bias=False)
        self.norm_q, self.norm_k = RMSNorm(hd, c.eps), RMSNorm(hd, c.eps)
        self.norm_added_q, self.norm_added_k = RMSNorm(hd, c.eps), RMSNorm(hd, c.eps)

    def __call__(self, img, txt, cos, sin) -> tuple[mx.array, mx.array]:
        hd = self.head_dim
        q = mx.concatenate([self.norm_added_q(heads(self.add_q_proj(txt), hd)), self.norm_q(heads(self.to_q(img), hd))], axis=1)
        k = mx.concatenate([self.norm_added_k(heads(self.add_k_proj(txt), hd)), self.norm_k(heads(self.to_k(img), hd))], axis=1)
        v = mx.concatenate([heads(self.add_v_proj(txt), hd), heads(self.to_v(img), hd)], axis=1)
        out = attention(q, k, v, cos, sin)
        n_txt = txt.shape[1]
        return self.to_out[0](out[:, n_txt:]), self.to_add_out(out[:, :n_txt])


class DoubleBlock(nn.Module):
    """diffusers' Flux2TransformerBlock: image and text streams, joint attention, one FFN each."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.eps = c.eps
        self.attn = JointAttention(c)
        self.ff = FeedForward(c.dim, c.mlp_dim)
        self.ff_context = FeedForward(c.dim, c.mlp_dim)

    def modulated(self, img: mx.array, mod_img) -> mx.array:
        """The image stream's attention input after the time modulation (TeaCache's "modulated input")."""
        return modulate(img, mod_img[0], mod_img[1], self.eps)

    def __call__(self, img, txt, mod_img, mod_txt, cos, sin) -> tuple[mx.array, mx.array]:
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = mod_img  # each (B, 1, D)
        c_shift_a, c_scale_a, c_gate_a, c_shift_f, c_scale_f, c_gate_f = mod_txt
        img_attn, txt_attn = self.attn(modulate(img, shift_a, scale_a, self.eps),
                                       modulate(txt, c_shift_a, c_scale_a, self.eps), cos, sin)
        img = img + gate_a * img_attn
        img = img + gate_f * self.ff(modulate(img, shift_f, scale_f, self.eps))
        txt = txt + c_gate_a * txt_attn
        txt = txt + c_gate_f * self.ff_context(modulate(txt, c_shift_f, c_scale_f, self.eps))
        return img, txt


class ParallelAttention(nn.Module):
    """Attention and the SwiGLU MLP side by side: one fused input and one fused output projection."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        d, hd = c.dim, c.attention_head_dim
        self.head_dim, self.dim, self.mlp_dim = hd, d, c.mlp_dim
        self.to_qkv_mlp_proj = nn.Linear(d, 3 * d + 2 * c.mlp_dim, bias=False)
        self.to_out = nn.Linear(d + c.mlp_dim, d, bias=False)
        self.norm_q, self.norm_k = RMSNorm(hd, c.eps), RMSNorm(hd, c.eps)

    def __call__(self, x, cos, sin) -> mx.array:
        qkv, mlp = mx.split(self.to_qkv_mlp_proj(x), [3 * self.dim], axis=-1)
        q, k, v = (heads(t, self.head_dim) for t in mx.split(qkv, 3, axis=-1))
        out = attention(self.norm_q(q), self.norm_k(k), v, cos, sin)
        gate, up = mx.split(mlp, 2, axis=-1)
        return self.to_out(mx.concatenate([out, silu(gate) * up], axis=-1))


class SingleBlock(nn.Module):
    """diffusers' Flux2SingleTransformerBlock over the joined [text, image] sequence."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.eps = c.eps
        self.attn = ParallelAttention(c)

    def __call__(self, x, mod, cos, sin) -> mx.array:
        shift, scale, gate = mod
        return x + gate * self.attn(modulate(x, shift, scale, self.eps), cos, sin)


class Modulation(nn.Module):
    """SiLU -> Linear to `sets` x (shift, scale, gate), computed once per step for all blocks of a kind."""

    def __init__(self, dim: int, sets: int):
        super().__init__()
        self.sets = sets
        self.linear = nn.Linear(dim, 3 * sets * dim, bias=False)

    def __call__(self, temb: mx.array) -> list[mx.array]:
        return mx.split(self.linear(silu(temb))[:, None, :], 3 * self.sets, axis=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.channels = channels
        self.linear_1 = nn.Linear(channels, dim, bias=False)
        self.linear_2 = nn.Linear(dim, dim, bias=False)

    def __call__(self, t: mx.array) -> mx.array:
        """t (B,) in the weights' dtype, already times 1000 -> (B, dim)."""
        half = self.channels // 2
        freqs = mx.exp(-math.log(10000) * mx.arange(half, dtype=mx.float32) / half)
        args = t.astype(mx.float32)[:, None] * freqs[None]
        emb = mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1).astype(t.dtype)  # (B, channels), cos first
        return self.linear_2(silu(self.linear_1(emb)))


class TimeGuidanceEmbed(nn.Module):
    """Holds the timestep embedder under its upstream name (klein has no guidance embedder)."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(c.timestep_guidance_channels, c.dim)


class OutputNorm(nn.Module):
    """AdaLayerNormContinuous: LayerNorm, then (1 + scale) and shift from SiLU -> Linear (scale first)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.linear = nn.Linear(dim, 2 * dim, bias=False)

    def __call__(self, x: mx.array, temb: mx.array) -> mx.array:
        scale, shift = mx.split(self.linear(silu(temb).astype(x.dtype)), 2, axis=-1)
        return layer_norm(x, self.eps) * (1 + scale)[:, None] + shift[:, None]


@dataclass
class Context:
    """What one generation gives every denoising step (nothing here depends on t or the latents)."""

    txt: mx.array  # (B, Lt, D) projected text features
    refs: mx.array | None  # (1, Lr, C) packed reference tokens, or None
    cos: mx.array  # (Lt + Li + Lr, head_dim / 2) float32
    sin: mx.array


class Flux2Transformer(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.config = c
        self.time_guidance_embed = TimeGuidanceEmbed(c)
        self.double_stream_modulation_img = Modulation(c.dim, 2)
        self.double_stream_modulation_txt = Modulation(c.dim, 2)
        self.single_stream_modulation = Modulation(c.dim, 1)
        self.x_embedder = nn.Linear(c.in_channels, c.dim, bias=False)
        self.context_embedder = nn.Linear(c.joint_attention_dim, c.dim, bias=False)
        self.transformer_blocks = [DoubleBlock(c) for _ in range(c.num_layers)]
        self.single_transformer_blocks = [SingleBlock(c) for _ in range(c.num_single_layers)]
        self.norm_out = OutputNorm(c.dim, c.eps)
        self.proj_out = nn.Linear(c.dim, c.channels_out, bias=False)

    @property
    def dtype(self) -> mx.Dtype:
        return self.proj_out.weight.dtype

    def prepare(self, text: mx.array, refs: mx.array | None, ref_sizes: list[tuple[int, int]],
                h: int, w: int) -> Context:
        """text (B, Lt, joint_attention_dim) features; refs (Lr, C) packed reference tokens or None,
        of the grids `ref_sizes`; h, w the packed latent grid."""
        c = self.config
        ids = np.concatenate([layout.text_ids(text.shape[1]), layout.grid_ids(h, w), layout.reference_ids(ref_sizes)])
        cos, sin = layout.rope(ids, c.axes_dims_rope, c.rope_theta)
        txt = self.context_embedder(text.astype(self.dtype))
        refs = None if refs is None else refs.astype(self.dtype)[None]
        return Context(txt, refs, mx.array(cos), mx.array(sin))

    def __call__(self, x: mx.array, t: np.ndarray, ctx: Context, cache=None) -> mx.array:
        """x float32 (B, C, h, w) packed latents; t float32 [B] (sigma, as diffusers passes timestep / 1000)
        -> float32 (B, C, h, w) velocity.

        `cache`: a TeaCache StepCache (ollimg/runtime/teacache.py) that may replace the double and
        single block stacks by their cached residual over [text, image], or None."""
        dtype = self.dtype
        B, C, h, w = x.shape
        n = h * w
        temb = self.time_guidance_embed.timestep_embedder(mx.array(np.asarray(t, np.float32)).astype(dtype) * 1000)
        mod_img = self.double_stream_modulation_img(temb)
        mod_txt = self.double_stream_modulation_txt(temb)
        mod_single = self.single_stream_modulation(temb)

        img = x.reshape(B, C, n).transpose(0, 2, 1).astype(dtype)  # (B, n, C) tokens row-major
        if ctx.refs is not None:
            img = mx.concatenate([img, mx.broadcast_to(ctx.refs, (B, *ctx.refs.shape[1:]))], axis=1)
        img = self.x_embedder(img)
        n_txt = ctx.txt.shape[1]

        def run(joint: mx.array) -> mx.array:
            txt, img = joint[:, :n_txt], joint[:, n_txt:]
            for block in self.transformer_blocks:
                img, txt = block(img, txt, mod_img, mod_txt, ctx.cos, ctx.sin)
            joint = mx.concatenate([txt, img], axis=1)
            for block in self.single_transformer_blocks:
                joint = block(joint, mod_single, ctx.cos, ctx.sin)
            return joint

        joint = mx.concatenate([ctx.txt, img], axis=1)  # (B, Lt + n + Lr, D)
        if cache is None:
            joint = run(joint)
        else:
            joint = cache.stack(self.transformer_blocks[0].modulated(img, mod_img), joint, run)
        out = self.proj_out(self.norm_out(joint[:, n_txt: n_txt + n], temb))  # (B, n, C)
        return out.astype(mx.float32).transpose(0, 2, 1).reshape(B, C, h, w)
