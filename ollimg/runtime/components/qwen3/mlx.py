"""The Qwen3 text encoder (transformers' Qwen3Model) on MLX, cut to the hidden states a family uses.
Same as torch.py: the same classes, the same split of the forward.

It holds the layers up to the last hidden state in `outputs` and no final norm (the key map in
`weights.py` lists the stored weights it leaves out). Parameter names are Qwen3Model's. Qwen3
RoPE rotates halves (not pairs, unlike the DiTs); GQA attention is causal, and with right padding
the real tokens never see the pads; with `length`, rows are padded to it and no query sees a pad key.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ollimg.runtime.mlx_backend import RMSNorm
from ollimg.runtime.mlx_math import silu


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

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, mask: mx.array | str) -> mx.array:
        b, l, _ = x.shape  # (B, L, hidden)
        q = self.q_norm(self.q_proj(x).reshape(b, l, self.heads, -1)).transpose(0, 2, 1, 3)  # (B, H, L, Dh)
        k = self.k_norm(self.k_proj(x).reshape(b, l, self.kv_heads, -1)).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, l, self.kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = rotate_half(q, cos, sin), rotate_half(k, cos, sin)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask=mask)
        return self.o_proj(o.transpose(0, 2, 1, 3).reshape(b, l, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, mask: mx.array | str = "causal") -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextEncoder(nn.Module):
    """Qwen3 up to the last hidden state in `outputs` (indices into transformers' hidden_states)."""

    def __init__(self, cfg, outputs: tuple[int, ...]):
        super().__init__()
        self.cfg, self.outputs = cfg, tuple(outputs)  # a Qwen3Config: silu, no attention bias (checked when read)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [DecoderLayer(cfg) for _ in range(max(self.outputs))]
        dim = cfg.head_dim
        self._inv_freq = 1.0 / (cfg.rope_theta ** (mx.arange(0, dim, 2, dtype=mx.float32) / dim))

    def __call__(self, ids: list[np.ndarray], length: int | None = None, pad_id: int = 0) -> list[mx.array]:
        """Token ids of each prompt -> features (L_i, len(outputs) * hidden) in the weights' dtype;
        L_i is the prompt's length, or `length` when given (the padded rows included)."""
        x, cos, sin, mask = self.embed(ids, length=length, pad_id=pad_id)
        states = {0: x}  # hidden state 0 is the embeddings (a one-layer encoder's hidden_states[-2])
        for k, layer in enumerate(self.layers, start=1):
            x = layer(x, cos, sin, mask)
            if k in self.outputs:
                states[k] = x
        return self.features(states, ids, length)

    def features(self, states: dict[int, mx.array], ids: list[np.ndarray], length: int | None) -> list[mx.array]:
        """The hidden states in `outputs` (by layer count), concatenated, cut to each prompt's rows."""
        x = mx.concatenate([states[k] for k in self.outputs], axis=-1)  # (B, L, F)
        return [x[i] if length else x[i, : len(item)] for i, item in enumerate(ids)]

    def embed(self, ids: list[np.ndarray], length: int | None = None, pad_id: int = 0):
        """The right-padded batch's embeddings (B, L, hidden), RoPE tables and attention mask."""
        longest = length or max(len(i) for i in ids)
        batch = np.full((len(ids), longest), pad_id, dtype=np.int32)
        for row, item in zip(batch, ids):
            row[: len(item)] = item[:longest]
        x = self.embed_tokens(mx.array(batch))
        angles = mx.arange(longest, dtype=mx.float32)[:, None] * self._inv_freq[None]
        angles = mx.concatenate([angles, angles], axis=-1)  # (L, Dh)
        cos, sin = mx.cos(angles).astype(x.dtype), mx.sin(angles).astype(x.dtype)
        mask = "causal"
        if length:
            real = np.arange(longest)[None, :] < np.array([len(i) for i in ids])[:, None]
            causal = np.tril(np.ones((longest, longest), dtype=bool))
            mask = mx.array(causal[None] & real[:, None, :])[:, None]  # (B, 1, L, L)
        return x, cos, sin, mask
