"""The Qwen3 text encoder in torch, cut to what Z-Image uses: the hidden state before the last
layer (un-normalised). Parameter names equal transformers' Qwen3 names without `model.`.

Prompts are right-padded into one batch under a plain causal mask: a real token never sees a
pad that follows it, so the features of the real tokens equal those of an unpadded run.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ollimg.runtime.models.zimage.config import TextEncoderConfig
from ollimg.runtime.torch_backend import Linear


class RMSNorm(nn.Module):
    """Qwen3RMSNorm: normalise in float32, cast back, then scale."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, c: TextEncoderConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=False)
        self.k_proj = Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.v_proj = Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.o_proj = Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)
        self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, L, self.heads, self.head_dim)).transpose(1, 2)  # (B, H, L, D)
        k = self.k_norm(self.k_proj(x).view(B, L, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, c: TextEncoderConfig):
        super().__init__()
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c: TextEncoderConfig):
        super().__init__()
        self.self_attn = SelfAttention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextEncoder(nn.Module):
    """Qwen3 up to (not including) its last layer."""

    def __init__(self, c: TextEncoderConfig):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList([Layer(c) for _ in range(c.num_hidden_layers - 1)])

    def _rope(self, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.config.head_dim
        inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        freqs = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1).to(device)  # (L, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, ids: list[np.ndarray]) -> list[torch.Tensor]:
        """Token ids of each prompt -> features (L_i, hidden) in the weights' dtype."""
        x, cos, sin = self.embed(ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return [x[i, : len(item)] for i, item in enumerate(ids)]

    def embed(self, ids: list[np.ndarray], device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The right-padded batch's embeddings (B, L, hidden) and RoPE tables, on `device` in `dtype`
        (default: the embedding table's; the table may stay on the CPU while the layers run on a GPU)."""
        table = self.embed_tokens.weight
        longest = max(len(i) for i in ids)
        batch = np.zeros((len(ids), longest), dtype=np.int64)  # any pad id: causal attention never sees it
        for row, item in zip(batch, ids):
            row[: len(item)] = item
        x = self.embed_tokens(torch.from_numpy(batch).to(table.device))  # (B, L, hidden)
        x = x.to(device or table.device, dtype or table.dtype)
        cos, sin = self._rope(longest, x.device, x.dtype)
        return x, cos, sin
