"""The FLUX.2 DiT in torch (diffusers' Flux2Transformer2DModel numerics, our own code).

Module and parameter names equal the upstream tensor names, so weights load by name. A forward
pass is split in two, as in the MLX twin: `prepare` runs once per generation (the text projection,
the reference tokens, the RoPE tables of [text, image, references]); `forward` runs per step.

Numerics that matter: the time embedding is computed from t * 1000 in the weights' dtype; every
LayerNorm is affine-free with eps from the config; q/k RMSNorm; RoPE rotates interleaved pairs in
float32 with cos/sin from float64 angles (`layout.rope`); modulation is SiLU -> Linear shared by
all blocks of a kind; the final AdaLayerNormContinuous splits scale before shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ollimg.runtime.models.flux2 import layout
from ollimg.runtime.models.flux2.config import TransformerConfig
from ollimg.runtime.torch_attention import sdpa
from ollimg.runtime.torch_backend import Linear, host_to_device


class RMSNorm(nn.Module):
    """torch.nn.RMSNorm as diffusers' Flux2Attention uses it (over head_dim)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, L, H, D); cos, sin float32 (L, D/2): rotate interleaved pairs (x[2j], x[2j+1]) in float32."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, L, H, D/2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack([re * cos - im * sin, im * cos + re * sin], dim=-1).flatten(3).to(x.dtype)


def attention(q, k, v, cos, sin) -> torch.Tensor:
    """q, k, v (B, L, H, D), already q/k-normed -> (B, L, H * D)."""
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return sdpa(q, k, v).flatten(2).to(q.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return (1 + scale) * layer_norm(x, eps) + shift


class FeedForward(nn.Module):
    """SwiGLU with the gate and the up projection fused in `linear_in` (gate first)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear_in = Linear(dim, 2 * hidden, bias=False)
        self.linear_out = Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.linear_in(x).chunk(2, dim=-1)
        return self.linear_out(F.silu(gate) * up)


class JointAttention(nn.Module):
    """Attention over [text, image]: each stream has its own projections and q/k norms."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        d, hd = c.dim, c.attention_head_dim
        self.head_dim = hd
        self.to_q, self.to_k, self.to_v = (Linear(d, d, bias=False) for _ in range(3))
        self.to_out = nn.ModuleList([Linear(d, d, bias=False)])
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (Linear(d, d, bias=False) for _ in range(3))
        self.to_add_out = Linear(d, d, bias=False)
        self.norm_q, self.norm_k = RMSNorm(hd, c.eps), RMSNorm(hd, c.eps)
        self.norm_added_q, self.norm_added_k = RMSNorm(hd, c.eps), RMSNorm(hd, c.eps)

    def forward(self, img, txt, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
        heads = lambda t: t.unflatten(-1, (-1, self.head_dim))  # (B, L, H, D)
        q = torch.cat([self.norm_added_q(heads(self.add_q_proj(txt))), self.norm_q(heads(self.to_q(img)))], dim=1)
        k = torch.cat([self.norm_added_k(heads(self.add_k_proj(txt))), self.norm_k(heads(self.to_k(img)))], dim=1)
        v = torch.cat([heads(self.add_v_proj(txt)), heads(self.to_v(img))], dim=1)
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

    def modulated(self, img: torch.Tensor, mod_img) -> torch.Tensor:
        """The image stream's attention input after the time modulation (TeaCache's "modulated input")."""
        return modulate(img, mod_img[0], mod_img[1], self.eps)

    def forward(self, img, txt, mod_img, mod_txt, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
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
        self.to_qkv_mlp_proj = Linear(d, 3 * d + 2 * c.mlp_dim, bias=False)
        self.to_out = Linear(d + c.mlp_dim, d, bias=False)
        self.norm_q, self.norm_k = RMSNorm(hd, c.eps), RMSNorm(hd, c.eps)

    def forward(self, x, cos, sin) -> torch.Tensor:
        qkv, mlp = self.to_qkv_mlp_proj(x).split([3 * self.dim, 2 * self.mlp_dim], dim=-1)
        q, k, v = (t.unflatten(-1, (-1, self.head_dim)) for t in qkv.chunk(3, dim=-1))
        out = attention(self.norm_q(q), self.norm_k(k), v, cos, sin)
        gate, up = mlp.chunk(2, dim=-1)
        return self.to_out(torch.cat([out, F.silu(gate) * up], dim=-1))


class SingleBlock(nn.Module):
    """diffusers' Flux2SingleTransformerBlock over the joined [text, image] sequence."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.eps = c.eps
        self.attn = ParallelAttention(c)

    def forward(self, x, mod, cos, sin) -> torch.Tensor:
        shift, scale, gate = mod
        return x + gate * self.attn(modulate(x, shift, scale, self.eps), cos, sin)


class Modulation(nn.Module):
    """SiLU -> Linear to `sets` x (shift, scale, gate), computed once per step for all blocks of a kind."""

    def __init__(self, dim: int, sets: int):
        super().__init__()
        self.sets = sets
        self.linear = Linear(dim, 3 * sets * dim, bias=False)

    def forward(self, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(temb)).unsqueeze(1).chunk(3 * self.sets, dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.channels = channels
        self.linear_1 = Linear(channels, dim, bias=False)
        self.linear_2 = Linear(dim, dim, bias=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (B,) in the weights' dtype, already times 1000 -> (B, dim)."""
        half = self.channels // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)  # (B, channels), cos first
        return self.linear_2(F.silu(self.linear_1(emb)))


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
        self.linear = Linear(dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(temb).to(x.dtype)).chunk(2, dim=-1)
        return layer_norm(x, self.eps) * (1 + scale)[:, None] + shift[:, None]


@dataclass
class Context:
    """What one generation gives every denoising step (nothing here depends on t or the latents)."""

    txt: torch.Tensor  # (B, Lt, D) projected text features
    refs: torch.Tensor | None  # (1, Lr, C) packed reference tokens, or None
    cos: torch.Tensor  # (Lt + Li + Lr, head_dim / 2) float32
    sin: torch.Tensor


class Flux2Transformer(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.config = c
        self.time_guidance_embed = TimeGuidanceEmbed(c)
        self.double_stream_modulation_img = Modulation(c.dim, 2)
        self.double_stream_modulation_txt = Modulation(c.dim, 2)
        self.single_stream_modulation = Modulation(c.dim, 1)
        self.x_embedder = Linear(c.in_channels, c.dim, bias=False)
        self.context_embedder = Linear(c.joint_attention_dim, c.dim, bias=False)
        self.transformer_blocks = nn.ModuleList([DoubleBlock(c) for _ in range(c.num_layers)])
        self.single_transformer_blocks = nn.ModuleList([SingleBlock(c) for _ in range(c.num_single_layers)])
        self.norm_out = OutputNorm(c.dim, c.eps)
        self.proj_out = Linear(c.dim, c.channels_out, bias=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype  # the compute dtype: proj_out is never float8 (weights.FP8)

    def prepare(self, text: torch.Tensor, refs: torch.Tensor | None, ref_sizes: list[tuple[int, int]],
                h: int, w: int) -> Context:
        """text (B, Lt, joint_attention_dim) features; refs (Lr, C) packed reference tokens or None,
        of the grids `ref_sizes`; h, w the packed latent grid."""
        c, dev = self.config, text.device
        ids = np.concatenate([layout.text_ids(text.shape[1]), layout.grid_ids(h, w), layout.reference_ids(ref_sizes)])
        cos, sin = layout.rope(ids, c.axes_dims_rope, c.rope_theta)
        txt = self.context_embedder(text.to(self.dtype))
        refs = None if refs is None else refs.to(dev, self.dtype)[None]
        return Context(txt, refs, torch.from_numpy(cos).to(dev), torch.from_numpy(sin).to(dev))

    def forward(self, x: torch.Tensor, t: np.ndarray, ctx: Context, cache=None) -> torch.Tensor:
        """x float32 (B, C, h, w) packed latents; t float32 [B] (sigma, as diffusers passes timestep / 1000)
        -> float32 (B, C, h, w) velocity.

        `cache`: a TeaCache StepCache (ollimg/runtime/teacache.py) that may replace the double and
        single block stacks by their cached residual over [text, image], or None."""
        dtype = self.dtype
        B, C, h, w = x.shape
        n = h * w
        temb = self.time_guidance_embed.timestep_embedder(host_to_device(np.asarray(t, np.float32), x.device).to(dtype) * 1000)
        mod_img = self.double_stream_modulation_img(temb)
        mod_txt = self.double_stream_modulation_txt(temb)
        mod_single = self.single_stream_modulation(temb)

        img = x.reshape(B, C, n).transpose(1, 2).to(dtype)  # (B, n, C) tokens row-major
        if ctx.refs is not None:
            img = torch.cat([img, ctx.refs.expand(B, -1, -1)], dim=1)
        img = self.x_embedder(img)
        n_txt = ctx.txt.shape[1]

        def run(joint: torch.Tensor) -> torch.Tensor:
            txt, img = joint[:, :n_txt], joint[:, n_txt:]
            for block in self.transformer_blocks:
                img, txt = block(img, txt, mod_img, mod_txt, ctx.cos, ctx.sin)
            joint = torch.cat([txt, img], dim=1)
            for block in self.single_transformer_blocks:
                joint = block(joint, mod_single, ctx.cos, ctx.sin)
            return joint

        joint = torch.cat([ctx.txt, img], dim=1)  # (B, Lt + n + Lr, D)
        if cache is None:
            joint = run(joint)
        else:
            joint = cache.stack(self.transformer_blocks[0].modulated(img, mod_img), joint, run)
        out = self.proj_out(self.norm_out(joint[:, n_txt: n_txt + n], temb))  # (B, n, C)
        return out.float().transpose(1, 2).reshape(B, C, h, w)
