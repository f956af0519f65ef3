"""The Qwen3 text encoder (transformers' Qwen3Model) on MLX, returning Z-Image's caption features.

Z-Image conditions on `hidden_states[-2]`: the output of the second-to-last decoder layer, before
the final norm. So this module holds every layer but the last and no final norm (the key map in
`weights.py` lists the stored weights it leaves out). Parameter names are Qwen3Model's. Qwen3
RoPE rotates halves (not pairs, unlike the DiT); GQA attention is causal, and with right padding
the real tokens never see the pads, so pad rows need no mask of their own.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.weight, self.eps)


def rotate_half(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:  # x: (B, H, L, Dh)
    half = x.shape[-1] // 2
    rotated = mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        b, l, _ = x.shape  # (B, L, hidden)
        q = self.q_norm(self.q_proj(x).reshape(b, l, self.heads, -1)).transpose(0, 2, 1, 3)  # (B, H, L, Dh)
        k = self.k_norm(self.k_proj(x).reshape(b, l, self.kv_heads, -1)).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, l, self.kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = rotate_half(q, cos, sin), rotate_half(k, cos, sin)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask="causal")
        return self.o_proj(o.transpose(0, 2, 1, 3).reshape(b, l, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg  # a TextEncoderConfig: silu, no attention bias (checked when it was read)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers - 1)]
        dim = cfg.head_dim
        self._inv_freq = 1.0 / (cfg.rope_theta ** (mx.arange(0, dim, 2, dtype=mx.float32) / dim))

    def __call__(self, input_ids: mx.array) -> mx.array:
        """(B, L) token ids, right-padded -> (B, L, hidden) features (rows past a prompt's end are junk)."""
        x = self.embed_tokens(input_ids)
        angles = mx.arange(input_ids.shape[1], dtype=mx.float32)[:, None] * self._inv_freq[None]
        angles = mx.concatenate([angles, angles], axis=-1)  # (L, Dh)
        cos, sin = mx.cos(angles).astype(x.dtype), mx.sin(angles).astype(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return x
