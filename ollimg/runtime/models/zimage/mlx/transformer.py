"""The Z-Image single-stream DiT (diffusers' ZImageTransformer2DModel, basic mode) on MLX.

Parameter names are diffusers' own, so stored weights load unrenamed. A forward pass is split in
two because the caption half does not depend on the timestep: `encode_captions` embeds and refines
the caption features and builds the RoPE tables and masks once per generation; `denoise` then runs
once per step on the latents. Both together compute exactly what diffusers' forward computes.

Numerics that matter (see the Z-Image reference note): RoPE rotates interleaved pairs in float32;
q/k RMSNorm eps 1e-5; sandwich RMSNorms; adaLN has no SiLU in the blocks but has one in the final
layer; pad slots (to a multiple of 32) carry learned pad tokens; the main sequence is image first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ollimg.runtime.mlx_backend import RMSNorm
from ollimg.runtime.mlx_math import attention, silu
from ollimg.runtime.models.zimage import layout


def rotate_pairs(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate (x[2j], x[2j+1]) by the angle whose cos/sin are given, in float32.

    x: (B, L, H, D); cos, sin: (B, L, 1, D/2).
    """
    b, l, h, d = x.shape
    pairs = x.astype(mx.float32).reshape(b, l, h, d // 2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    out = mx.stack([re * cos - im * sin, re * sin + im * cos], axis=-1)
    return out.reshape(b, l, h, d).astype(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = [nn.Linear(dim, dim, bias=False)]
        if qk_norm:
            self.norm_q = RMSNorm(dim // heads, 1e-5)
            self.norm_k = RMSNorm(dim // heads, 1e-5)

    def __call__(self, x: mx.array, mask: mx.array | None, cos: mx.array, sin: mx.array) -> mx.array:
        b, l, dim = x.shape  # (B, L, D)
        q = self.to_q(x).reshape(b, l, self.heads, -1)  # (B, L, H, Dh)
        k = self.to_k(x).reshape(b, l, self.heads, -1)
        v = self.to_v(x).reshape(b, l, self.heads, -1)
        if "norm_q" in self:
            q, k = self.norm_q(q), self.norm_k(k)
        q, k = rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin)
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, H, L, Dh)
        o = attention(q, k, v, 1.0 / math.sqrt(q.shape[-1]), mask)
        return self.to_out[0](o.transpose(0, 2, 1, 3).reshape(b, l, dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.w2(silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre- and post-RMSNorm around attention and FFN; modulated blocks scale and gate both."""

    def __init__(self, cfg, modulation: bool):
        super().__init__()
        dim, eps = cfg.dim, cfg.norm_eps
        self.attention = Attention(dim, cfg.n_heads, cfg.qk_norm)
        self.feed_forward = FeedForward(dim, cfg.ffn_dim)
        self.attention_norm1 = RMSNorm(dim, eps)
        self.ffn_norm1 = RMSNorm(dim, eps)
        self.attention_norm2 = RMSNorm(dim, eps)
        self.ffn_norm2 = RMSNorm(dim, eps)
        if modulation:
            self.adaLN_modulation = [nn.Linear(cfg.adaln_dim, 4 * dim)]  # no SiLU before it

    def modulated(self, x: mx.array, adaln: mx.array) -> mx.array:
        """The attention input after the time modulation (TeaCache's "modulated input")."""
        scale_msa = mx.split(self.adaLN_modulation[0](adaln)[:, None, :], 4, axis=-1)[0]
        return self.attention_norm1(x) * (1.0 + scale_msa)

    def __call__(self, x, mask, cos, sin, adaln: mx.array | None = None) -> mx.array:  # x: (B, L, D)
        if adaln is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), mask, cos, sin))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        mod = self.adaLN_modulation[0](adaln)[:, None, :]  # (B, 1, 4D)
        scale_msa, gate_msa, scale_mlp, gate_mlp = mx.split(mod, 4, axis=-1)
        attn = self.attention(self.attention_norm1(x) * (1.0 + scale_msa), mask, cos, sin)
        x = x + mx.tanh(gate_msa) * self.attention_norm2(attn)
        ffn = self.feed_forward(self.ffn_norm1(x) * (1.0 + scale_mlp))
        return x + mx.tanh(gate_mlp) * self.ffn_norm2(ffn)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, adaln_dim: int, out: int):
        super().__init__()
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = [nn.SiLU(), nn.Linear(adaln_dim, dim)]

    def __call__(self, x: mx.array, c: mx.array) -> mx.array:  # (B, L, D), (B, A) -> (B, L, out)
        scale = 1.0 + self.adaLN_modulation[1](silu(c))[:, None, :]
        return self.linear(mx.fast.layer_norm(x, None, None, 1e-6) * scale)


class TimestepEmbedder(nn.Module):
    def __init__(self, out: int, mid: int = 1024, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = [nn.Linear(freq_dim, mid), nn.SiLU(), nn.Linear(mid, out)]

    def __call__(self, t: mx.array) -> mx.array:  # (B,) float32 -> (B, out)
        half = self.freq_dim // 2
        freqs = mx.exp(-math.log(10000) * mx.arange(half, dtype=mx.float32) / half)
        args = t.astype(mx.float32)[:, None] * freqs[None]
        emb = mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1).astype(self.mlp[0].weight.dtype)
        return self.mlp[2](silu(self.mlp[0](emb)))


@dataclass
class Captions:
    """What one generation's caption half gives every denoising step (nothing here depends on t)."""

    cap: mx.array  # (B, Lc, D) refined caption tokens, batch-padded
    x_cos: mx.array  # (B, Lx, 1, Dh/2) image RoPE
    x_sin: mx.array
    cos: mx.array  # (B, Lx + Lc, 1, Dh/2) main-sequence RoPE, image first
    sin: mx.array
    mask: mx.array | None  # (B, 1, 1, Lx + Lc) keys that exist; None when no row is padded


class ZImageTransformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg  # a TransformerConfig: patch size 2, frame patch 1 (checked when it was read)
        dim, patch = cfg.dim, 4 * cfg.in_channels
        self.all_x_embedder = {"2-1": nn.Linear(patch, dim)}
        self.all_final_layer = {"2-1": FinalLayer(dim, cfg.adaln_dim, patch)}
        self.noise_refiner = [Block(cfg, modulation=True) for _ in range(cfg.n_refiner_layers)]
        self.context_refiner = [Block(cfg, modulation=False) for _ in range(cfg.n_refiner_layers)]
        self.t_embedder = TimestepEmbedder(cfg.adaln_dim)
        self.cap_embedder = [RMSNorm(cfg.cap_feat_dim, cfg.norm_eps), nn.Linear(cfg.cap_feat_dim, dim)]
        self.x_pad_token = mx.zeros((1, dim))
        self.cap_pad_token = mx.zeros((1, dim))
        self.layers = [Block(cfg, modulation=True) for _ in range(cfg.n_layers)]
        self._rope = layout.Rope(cfg)
        self._captions: dict = {}
        # The weights enter the compiled parts as constants: they must be rebuilt if they are replaced.
        # The step is compiled in three parts (before, the main block stack, after) so that TeaCache
        # can skip the stack, and a cached run that skips nothing is the uncached run, bit for bit.
        self.compiled = False
        self._compiled = {f.__name__: mx.compile(f) for f in (self._head, self._stack, self._tail, self._modulated)}

    def __call__(self, latents: mx.array, t: mx.array, cap_feats: list[mx.array], cache=None) -> mx.array:
        """diffusers' forward: (B, C, H, W) latents, (B,) t in [0, 1], B caption arrays -> float32 (B, C, H, W).

        `cache`: a TeaCache StepCache (ollimg/runtime/teacache.py) that may replace the main block
        stack by its cached residual, or None.

        The encoded captions of the last two caption lists (by identity: the denoise loop passes the
        same arrays every step, with and without the CFG half) are kept for the next steps.
        """
        grid = (latents.shape[2] // 2, latents.shape[3] // 2)
        key = (tuple(id(c) for c in cap_feats), grid)
        if key not in self._captions:
            last = list(self._captions.items())[-1:]
            # The entry holds the caption arrays themselves, so their ids cannot be reused meanwhile.
            self._captions = dict(last + [(key, (cap_feats, self.encode_captions(cap_feats, *grid)))])
        return self.denoise(latents, t, self._captions[key][1], cache).astype(mx.float32)

    def encode_captions(self, cap_feats: list[mx.array], h: int, w: int) -> Captions:
        """Embed and refine the captions ((L_i, cap_feat_dim) each) for an (h, w)-token image."""
        lens = [int(c.shape[0]) for c in cap_feats]
        pads = [layout.padded(n) for n in lens]
        lc, lx = max(pads), layout.padded(h * w)
        dtype = self.x_pad_token.dtype

        feats = mx.stack([mx.pad(c.astype(dtype), [(0, lc - n), (0, 0)]) for c, n in zip(cap_feats, lens)])
        cap = self.cap_embedder[1](self.cap_embedder[0](feats))  # (B, Lc, D)
        slot = np.arange(lc)[None, :]
        is_pad = mx.array((slot >= np.array(lens)[:, None]) & (slot < np.array(pads)[:, None]))
        cap = mx.where(is_pad[..., None], self.cap_pad_token, cap)

        # Rows shorter than Lc are batch padding past their end: any position will do, they are masked.
        cap_angles = np.stack([self._rope(layout.caption_positions(lc))] * len(lens))  # (B, Lc, Dh/2)
        x_angles = np.stack([self._rope(layout.image_positions(n, h, w)) for n in pads])  # (B, Lx, Dh/2)
        cap_cos, cap_sin = cos_sin(cap_angles)
        cap_mask = key_mask(pads, 0, lc)
        for layer in self.context_refiner:
            cap = layer(cap, cap_mask, cap_cos, cap_sin)

        x_cos, x_sin = cos_sin(x_angles)
        return Captions(
            cap=cap, x_cos=x_cos, x_sin=x_sin,
            cos=mx.concatenate([x_cos, cap_cos], axis=1), sin=mx.concatenate([x_sin, cap_sin], axis=1),
            mask=key_mask(pads, lx, lc),
        )

    def denoise(self, latents: mx.array, t: mx.array, captions: Captions, cache=None) -> mx.array:
        """One DiT forward for (B, C, H, W) latents at times t (B,), given the encoded captions."""
        part = self._compiled if self.compiled else {f.__name__: f for f in (self._head, self._stack, self._tail,
                                                                              self._modulated)}
        rope = [captions.x_cos, captions.x_sin, captions.cos, captions.sin]
        masks = [] if captions.mask is None else [captions.mask]
        x, adaln = part["_head"](latents, t, captions.cap, rope)

        def run(hidden: mx.array) -> mx.array:
            return part["_stack"](hidden, adaln, rope, masks)

        x = run(x) if cache is None else cache.stack(part["_modulated"](x, adaln), x, run)
        return part["_tail"](x, adaln, latents)

    def _head(self, latents: mx.array, t: mx.array, cap: mx.array, rope: list) -> tuple[mx.array, mx.array]:
        """Patchify, embed, the noise refiner; the unified (image first) sequence and the time embedding."""
        b, c, hh, ww = latents.shape
        h, w = hh // 2, ww // 2
        x_cos, x_sin = rope[0], rope[1]
        dtype = self.x_pad_token.dtype
        adaln = self.t_embedder(t * self.cfg.t_scale).astype(dtype)  # (B, 256)

        x = latents.astype(dtype).reshape(b, c, h, 2, w, 2).transpose(0, 2, 4, 3, 5, 1).reshape(b, h * w, 4 * c)
        x = self.all_x_embedder["2-1"](x)  # (B, h*w, D)
        lx = x_cos.shape[1]
        if lx > h * w:
            x = mx.concatenate([x, mx.broadcast_to(self.x_pad_token, (b, lx - h * w, x.shape[-1]))], axis=1)
        for layer in self.noise_refiner:
            x = layer(x, None, x_cos, x_sin, adaln)
        return mx.concatenate([x, cap], axis=1), adaln  # image first

    def _stack(self, x: mx.array, adaln: mx.array, rope: list, masks: list) -> mx.array:
        """The main block stack over the unified sequence."""
        mask = masks[0] if masks else None
        for layer in self.layers:
            x = layer(x, mask, rope[2], rope[3], adaln)
        return x

    def _modulated(self, x: mx.array, adaln: mx.array) -> mx.array:
        return self.layers[0].modulated(x, adaln)

    def _tail(self, x: mx.array, adaln: mx.array, latents: mx.array) -> mx.array:
        """The final layer on the image tokens, unpatchified to (B, C, H, W)."""
        b, c, hh, ww = latents.shape
        h, w = hh // 2, ww // 2
        x = self.all_final_layer["2-1"](x, adaln)[:, : h * w]  # (B, h*w, 4C)
        return x.reshape(b, h, w, 2, 2, c).transpose(0, 5, 1, 3, 2, 4).reshape(b, c, hh, ww)


def cos_sin(angles: np.ndarray) -> tuple[mx.array, mx.array]:
    """float32 cos and sin (B, L, 1, Dh/2) of RoPE angles (B, L, Dh/2), computed in float32 like torch.polar."""
    return mx.array(np.cos(angles))[:, :, None], mx.array(np.sin(angles))[:, :, None]


def key_mask(padded: list[int], prefix: int, lc: int) -> mx.array | None:
    """(B, 1, 1, prefix + Lc) True where a key exists; None when every row is full."""
    if all(n == lc for n in padded):
        return None
    valid = np.arange(prefix + lc)[None, :] < (prefix + np.array(padded))[:, None]
    return mx.array(valid)[:, None, None, :]
