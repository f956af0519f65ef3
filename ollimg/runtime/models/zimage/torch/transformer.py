"""The Z-Image single-stream DiT in torch (ZImageTransformer2DModel's numerics, our own code).

Module and parameter names equal the upstream tensor names, so weights load by name. `fuse()`
then concatenates the q/k/v projections and the SwiGLU's gate/up projections into one GEMM each
(done on the GPU, where it pays; the CPU keeps the mapped weights as they are).
Position ids and RoPE angles come from the shared numpy layout, once per shape; RoPE rotates
interleaved pairs in float32 with real cos/sin (diffusers' complex multiply, written so that
torch.compile fuses it). The fused q/k projections put each head's pairs into its two halves, the
layout in which the compiled QK norm and RoPE read everything contiguously (apply_rope_halves).
Attention is the torch runtime's (SDPA, or FlashAttention 4 in compiled blocks where installed:
ollimg/runtime/torch_attention.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ollimg.runtime.models.zimage import layout
from ollimg.runtime.models.zimage.config import TransformerConfig
from ollimg.runtime.torch_attention import attention
from ollimg.runtime.torch_backend import Linear, host_to_device


class RMSNorm(nn.Module):
    """diffusers' RMSNorm: statistics in float32, result in the weight's dtype if 16-bit."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x (B, L, H, D); freqs float32 (B, L, D/2, 2) = (cos, sin): rotate interleaved pairs (x[2j], x[2j+1])
    as the complex product (a + ib)(cos + i sin), in float32.

    Eager, that product is one complex kernel; under torch.compile (which generates no complex
    code) it is written out in real arithmetic, which the compiler fuses with the casts around it."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, L, H, D/2, 2)
    if not torch.compiler.is_compiling():
        rotated = torch.view_as_complex(pairs) * torch.view_as_complex(freqs).unsqueeze(2)
        return torch.view_as_real(rotated).flatten(3).type_as(x)
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = freqs[..., 0].unsqueeze(2), freqs[..., 1].unsqueeze(2)  # (B, L, 1, D/2)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(3).type_as(x)


def apply_rope_halves(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoPE for heads whose pairs are their halves, (x[j], x[j + D/2]) (the fused projections' order,
    `halves_order`): x (B, L, H, D); freqs float32 (B, L, 2, D/2) = (cos, sin). The same rotation as
    `apply_rope`, in float32, with every load contiguous. Under torch.compile the QK norm and RoPE
    are one Triton kernel per block; with interleaved pairs and (L, D/2, 2) tables it read through
    masked stride-2 gathers: 135 against 70 us a block in bf16 on the H200 (bench/block_kernels.py)."""
    a, b = x.float().chunk(2, dim=-1)  # (B, L, H, D/2) each
    cos, sin = freqs[:, :, 0].unsqueeze(2), freqs[:, :, 1].unsqueeze(2)  # (B, L, 1, D/2)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1).type_as(x)


def halves_order(n_heads: int, head_dim: int) -> torch.Tensor:
    """Row order of a q or k projection that puts each head's interleaved pairs into halves:
    row h*D + j takes h*D + 2j (j < D/2), and h*D + D/2 + j takes h*D + 2j + 1. Attention is unchanged
    when q and k are permuted alike along D, so only RoPE (apply_rope_halves) sees the order."""
    within = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return (torch.arange(n_heads)[:, None] * head_dim + within).flatten()


def fused_linear(parts: list[Linear], orders: list[torch.Tensor | None] | None = None) -> Linear:
    """One Linear computing the concatenation of `parts`' outputs (same input; fp8 scales concatenated
    too), each part's rows optionally reordered by its entry in `orders`."""
    first = parts[0]
    orders = orders or [None] * len(parts)

    def rows(tensor: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
        return tensor if order is None else tensor[order.to(tensor.device)]

    with torch.device("meta"):
        out = Linear(first.weight.shape[1], sum(p.weight.shape[0] for p in parts), bias=first.bias is not None)
    out.weight = nn.Parameter(torch.cat([rows(p.weight, o) for p, o in zip(parts, orders)]), requires_grad=False)
    if first.bias is not None:
        out.bias = nn.Parameter(torch.cat([rows(p.bias, o) for p, o in zip(parts, orders)]), requires_grad=False)
    if first.weight_scale is not None:
        out.weight_scale = torch.cat([rows(p.weight_scale, o) for p, o in zip(parts, orders)])
    out.fp8_kernel = first.fp8_kernel
    return out


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, qk_norm: bool):
        super().__init__()
        self.n_heads = n_heads
        self.to_q = Linear(dim, dim, bias=False)
        self.to_k = Linear(dim, dim, bias=False)
        self.to_v = Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([Linear(dim, dim, bias=False)])
        self.norm_q = RMSNorm(dim // n_heads, eps=1e-5) if qk_norm else None
        self.norm_k = RMSNorm(dim // n_heads, eps=1e-5) if qk_norm else None
        self.to_qkv: Linear | None = None  # set by fuse(), with q and k in `halves_order`

    def fuse(self) -> None:
        head_dim = self.to_q.weight.shape[0] // self.n_heads
        order = halves_order(self.n_heads, head_dim)
        self.to_qkv = fused_linear([self.to_q, self.to_k, self.to_v], [order, order, None])
        del self.to_q, self.to_k, self.to_v
        within = halves_order(1, head_dim)  # the QK norms' weights, per head
        for norm in (self.norm_q, self.norm_k):
            if norm is not None:
                norm.weight = nn.Parameter(norm.weight[within.to(norm.weight.device)], requires_grad=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, freqs: torch.Tensor) -> torch.Tensor:
        if self.to_qkv is not None:
            q, k, v = self.to_qkv(x).unflatten(-1, (3, self.n_heads, -1)).unbind(2)  # 3 x (B, L, H, D)
            rope = apply_rope_halves  # freqs (B, L, 2, D/2)
        else:
            q = self.to_q(x).unflatten(-1, (self.n_heads, -1))  # (B, L, H, D)
            k = self.to_k(x).unflatten(-1, (self.n_heads, -1))
            v = self.to_v(x).unflatten(-1, (self.n_heads, -1))
            rope = apply_rope  # freqs (B, L, D/2, 2)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        q, k = rope(q, freqs), rope(k, freqs)
        out = attention(q, k, v, mask)  # (B, L, H, D)
        return self.to_out[0](out.flatten(2).to(q.dtype))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = Linear(dim, hidden, bias=False)
        self.w2 = Linear(hidden, dim, bias=False)
        self.w3 = Linear(dim, hidden, bias=False)
        self.w13: Linear | None = None  # set by fuse()

    def fuse(self) -> None:
        self.w13 = fused_linear([self.w1, self.w3])
        del self.w1, self.w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is not None:
            gate, up = self.w13(x).chunk(2, dim=-1)
            return self.w2(F.silu(gate) * up)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Sandwich-normed attention + SwiGLU; `modulated` blocks scale and gate by the time embedding."""

    def __init__(self, c: TransformerConfig, modulated: bool):
        super().__init__()
        self.attention = Attention(c.dim, c.n_heads, c.qk_norm)
        self.feed_forward = FeedForward(c.dim, c.ffn_dim)
        self.attention_norm1 = RMSNorm(c.dim, c.norm_eps)
        self.attention_norm2 = RMSNorm(c.dim, c.norm_eps)
        self.ffn_norm1 = RMSNorm(c.dim, c.norm_eps)
        self.ffn_norm2 = RMSNorm(c.dim, c.norm_eps)
        self.adaLN_modulation = nn.Sequential(Linear(c.adaln_dim, 4 * c.dim)) if modulated else None

    def modulated(self, x: torch.Tensor, adaln: torch.Tensor) -> torch.Tensor:
        """The attention input after the time modulation (TeaCache's "modulated input")."""
        scale_msa = self.adaLN_modulation(adaln).unsqueeze(1).chunk(4, dim=2)[0]
        return self.attention_norm1(x) * (1.0 + scale_msa)

    def forward(self, x, mask, freqs, adaln=None) -> torch.Tensor:
        if self.adaLN_modulation is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), mask, freqs))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(adaln).unsqueeze(1).chunk(4, dim=2)
        attn = self.attention(self.attention_norm1(x) * (1.0 + scale_msa), mask, freqs)
        x = x + gate_msa.tanh() * self.attention_norm2(attn)
        return x + gate_mlp.tanh() * self.ffn_norm2(self.feed_forward(self.ffn_norm1(x) * (1.0 + scale_mlp)))


class TimestepEmbedder(nn.Module):
    def __init__(self, out: int):
        super().__init__()
        self.mlp = nn.Sequential(Linear(256, 1024), nn.SiLU(), Linear(1024, out))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = 128
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 256), cos first
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class FinalLayer(nn.Module):
    def __init__(self, c: TransformerConfig, out: int):
        super().__init__()
        self.linear = Linear(c.dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(c.adaln_dim, c.dim))

    def forward(self, x: torch.Tensor, adaln: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + self.adaLN_modulation(adaln)
        return self.linear(F.layer_norm(x, x.shape[-1:], eps=1e-6) * scale.unsqueeze(1))


def _pad_batch(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack sequences of different lengths, zero-padded; mask (B, L) True where real, None if all equal."""
    lengths = [len(i) for i in items]
    stacked = nn.utils.rnn.pad_sequence(items, batch_first=True, padding_value=0.0)
    if len(set(lengths)) == 1:
        return stacked, None
    mask = torch.arange(stacked.shape[1], device=stacked.device)[None, :] < torch.tensor(lengths, device=stacked.device)[:, None]
    return stacked, mask


class ZImageTransformer(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.config = c
        key = f"{c.patch_size}-{c.all_f_patch_size[0]}"
        patch = c.patch_size ** 2 * c.in_channels
        self.all_x_embedder = nn.ModuleDict({key: Linear(patch, c.dim)})
        self.all_final_layer = nn.ModuleDict({key: FinalLayer(c, patch)})
        self.noise_refiner = nn.ModuleList([Block(c, modulated=True) for _ in range(c.n_refiner_layers)])
        self.context_refiner = nn.ModuleList([Block(c, modulated=False) for _ in range(c.n_refiner_layers)])
        self.layers = nn.ModuleList([Block(c, modulated=True) for _ in range(c.n_layers)])
        self.t_embedder = TimestepEmbedder(c.adaln_dim)
        self.cap_embedder = nn.Sequential(RMSNorm(c.cap_feat_dim, c.norm_eps), Linear(c.cap_feat_dim, c.dim))
        self.x_pad_token = nn.Parameter(torch.empty(1, c.dim), requires_grad=False)
        self.cap_pad_token = nn.Parameter(torch.empty(1, c.dim), requires_grad=False)
        self.key = key
        self.rope = layout.Rope(c)
        self._shape_cache = None  # (key, RoPE tables and masks) of the last shape seen

    def fuse(self) -> None:
        """Concatenate q/k/v and gate/up weights into one GEMM each (frees the separate ones); q and k
        in `halves_order`, so RoPE's tables become (L, 2, D/2)."""
        for module in self.modules():
            if isinstance(module, (Attention, FeedForward)):
                module.fuse()
        self._shape_cache = None  # its RoPE tables are in the unfused layout

    @property
    def fused(self) -> bool:
        """Whether `fuse()` has run (its blocks then take RoPE tables as (L, 2, D/2))."""
        return self.layers[0].attention.to_qkv is not None

    def _freqs(self, ids: np.ndarray, device) -> torch.Tensor:
        """RoPE's cos and sin: (L, 2, D/2) for the fused blocks (apply_rope_halves), else (L, D/2, 2)."""
        angles = torch.from_numpy(self.rope(ids))  # float32 (L, D/2)
        return torch.stack([angles.cos(), angles.sin()], dim=-2 if self.fused else -1).to(device)

    def _positions(self, ht: int, wt: int, lengths: list[int], device):
        """RoPE tables and masks of one request's shape: (img_freqs, cap_freqs, cap_mask, freqs, mask),
        computed once and reused by every step (no host work or upload inside the loop)."""
        key = (ht, wt, tuple(lengths), str(device))
        if self._shape_cache and self._shape_cache[0] == key:
            return self._shape_cache[1]
        cap_lens = [layout.padded(n) for n in lengths]
        img_freqs = torch.stack([self._freqs(layout.image_positions(lc, ht, wt), device) for lc in cap_lens])
        cap_freqs, cap_mask = _pad_batch([self._freqs(layout.caption_positions(n), device) for n in lengths])
        freqs, mask = _pad_batch([torch.cat([img_freqs[i], cap_freqs[i, :lc]]) for i, lc in enumerate(cap_lens)])
        tables = (img_freqs, cap_freqs, cap_mask, freqs, mask)
        self._shape_cache = (key, tables)
        return tables

    def forward(self, x: torch.Tensor, t: np.ndarray, caps: list[torch.Tensor], cache=None) -> torch.Tensor:
        """x float32 (B, C, H, W) latents; t float32 [B]; caps B features (L_i, cap_feat_dim) -> float32 (B, C, H, W).

        `cache`: a TeaCache StepCache (ollimg/runtime/teacache.py) that may replace the main
        block stack by its cached residual, or None."""
        c, dev = self.config, x.device
        dtype = self.x_pad_token.dtype
        B, C, H, W = x.shape
        ht, wt = H // 2, W // 2
        n, n_pad = ht * wt, layout.padded(ht * wt)
        adaln = self.t_embedder(host_to_device(np.asarray(t, np.float32) * np.float32(c.t_scale), dev)).to(dtype)

        # Patchify: tokens row-major (h, w), features (ph, pw, c) with c fastest.
        tokens = x.to(dtype).view(B, C, ht, 2, wt, 2).permute(0, 2, 4, 3, 5, 1).reshape(B, n, 4 * C)
        img = self.all_x_embedder[self.key](tokens)  # (B, n, dim)
        img = torch.cat([img, self.x_pad_token.expand(B, n_pad - n, -1)], dim=1)

        cap_lens = [layout.padded(len(f)) for f in caps]
        img_freqs, cap_freqs, cap_mask, freqs, mask = self._positions(ht, wt, [len(f) for f in caps], dev)
        for block in self.noise_refiner:
            img = block(img, None, img_freqs, adaln)

        cap_items = []
        for feats, lc in zip(caps, cap_lens):
            emb = self.cap_embedder(feats.to(dev, dtype))
            cap_items.append(torch.cat([emb, self.cap_pad_token.expand(lc - len(feats), -1)]))
        cap, _ = _pad_batch(cap_items)
        for block in self.context_refiner:
            cap = block(cap, cap_mask, cap_freqs)

        unified, _ = _pad_batch([torch.cat([img[i], cap[i, :lc]]) for i, lc in enumerate(cap_lens)])

        def run(hidden: torch.Tensor) -> torch.Tensor:
            for block in self.layers:
                hidden = block(hidden, mask, freqs, adaln)
            return hidden

        if cache is None:
            unified = run(unified)
        else:
            unified = cache.stack(self.layers[0].modulated(unified, adaln), unified, run)
        out = self.all_final_layer[self.key](unified, adaln)[:, :n]  # (B, n, 4C)
        return out.float().view(B, ht, wt, 2, 2, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
