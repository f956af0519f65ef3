"""The Qwen3 text encoder in torch, cut to the hidden states a family uses (un-normalised).
Parameter names equal transformers' Qwen3 names without `model.`.

Prompts are right-padded into one batch. Without `length`, a plain causal mask: a real token
never sees a pad that follows it, so the features of the real tokens equal those of an unpadded
run. With `length` (a family that conditions on the padded sequence, as transformers computes it
with an attention mask), every row is padded to `length` with `pad_id` and no query sees a pad key.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ollimg.runtime.components.qwen3.config import Qwen3Config
from ollimg.runtime.torch_backend import Linear, assign, load_module


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


class Attention(nn.Module):
    def __init__(self, c: Qwen3Config):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=False)
        self.k_proj = Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.v_proj = Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.o_proj = Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)
        self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, L, self.heads, self.head_dim)).transpose(1, 2)  # (B, H, L, D)
        k = self.k_norm(self.k_proj(x).view(B, L, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, c: Qwen3Config):
        super().__init__()
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: Qwen3Config):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, mask=None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextEncoder(nn.Module):
    """Qwen3 up to the last hidden state in `outputs` (indices into transformers' hidden_states)."""

    def __init__(self, c: Qwen3Config, outputs: tuple[int, ...]):
        super().__init__()
        self.config, self.outputs = c, tuple(outputs)
        # Its table given, not drawn: on the meta device, normal_ (nn.Embedding's own init) is the
        # one op whose kernel imports torch's Python meta registrations and sympy, 1.5-3 s of a start.
        table = torch.empty(c.vocab_size, c.hidden_size)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, _weight=table, _freeze=True)
        self.layers = nn.ModuleList([DecoderLayer(c) for _ in range(max(self.outputs))])
        self.compute: tuple = (None, None)  # the layers' device and dtype (None: the table's)

    def _rope(self, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.config.head_dim
        inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        freqs = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1).to(device)  # (L, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, ids: list[np.ndarray], length: int | None = None, pad_id: int = 0,
                layers: Callable | None = None) -> list[torch.Tensor]:
        """Token ids of each prompt -> features (L_i, len(outputs) * hidden) in the layers' dtype;
        L_i is the prompt's length, or `length` when given (the padded rows included). `layers`
        runs in place of `hidden_states`, the same computation (a CUDA graph of it)."""
        x, cos, sin, mask = self.embed(ids, *self.compute, length=length, pad_id=pad_id)
        return self.features((layers or self.hidden_states)(x, cos, sin, mask), ids, length)

    def hidden_states(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """The layers run over `embed`'s output: the hidden states in `outputs`, by layer count."""
        states = {0: x}  # hidden state 0 is the embeddings (a one-layer encoder's hidden_states[-2])
        for k, layer in enumerate(self.layers, start=1):
            x = layer(x, cos, sin, mask)
            if k in self.outputs:
                states[k] = x
        return states

    def features(self, states: dict[int, torch.Tensor], ids: list[np.ndarray], length: int | None) -> list[torch.Tensor]:
        """The hidden states in `outputs` (by layer count), concatenated, cut to each prompt's rows."""
        x = torch.cat([states[k] for k in self.outputs], dim=-1)  # (B, L, F)
        return [x[i] if length else x[i, : len(item)] for i, item in enumerate(ids)]

    def embed(self, ids: list[np.ndarray], device=None, dtype=None, length: int | None = None, pad_id: int = 0):
        """The right-padded batch's embeddings (B, L, hidden), RoPE tables and attention mask (None:
        causal), on `device` in `dtype` (default: the embedding table's; the table may stay on the
        CPU while the layers run on a GPU)."""
        table = self.embed_tokens.weight
        longest = length or max(len(i) for i in ids)
        batch = np.full((len(ids), longest), pad_id, dtype=np.int64)
        for row, item in zip(batch, ids):
            row[: len(item)] = item[:longest]
        x = self.embed_tokens(torch.from_numpy(batch).to(table.device))  # (B, L, hidden)
        x = x.to(device or table.device, dtype or table.dtype)
        cos, sin = self._rope(longest, x.device, x.dtype)
        mask = None
        if length:
            real = torch.from_numpy(np.arange(longest)[None, :] < np.array([len(i) for i in ids])[:, None])
            causal = torch.ones(longest, longest, dtype=torch.bool).tril()
            mask = (causal[None] & real[:, None, :]).to(x.device)[:, None]  # (B, 1, L, L)
        return x, cos, sin, mask


TABLE = "embed_tokens.weight"


def device_refs(refs: dict) -> dict:
    """The tensors the text encoder holds on a GPU: all but the embedding table (a prompt's rows
    are looked up in CPU memory)."""
    return {name: ref for name, ref in refs.items() if name != TABLE}


def load_encoder(backend, config: Qwen3Config, outputs: tuple[int, ...], refs: dict, where: str) -> TextEncoder:
    """The text encoder with its layers on the backend's device. On a GPU its embedding table stays
    mapped in CPU memory in the stored dtype and a prompt's rows are looked up there: the table
    (151,936 rows, 0.78 GB for Qwen3-4B) is neither read from the disk at load nor held on the
    device. The rows are cast to the compute dtype after the lookup: the same values."""
    if backend.device.type == "cpu":
        return load_module(backend, TextEncoder, (config, outputs), refs, where)
    tensors = backend.load_tensors(device_refs(refs))
    encoder = _with_cpu_table(backend, config, outputs, refs)
    encoder.compute = (backend.device, backend.torch_dtype)
    return assign(encoder, tensors, where).eval()


def _with_cpu_table(backend, config: Qwen3Config, outputs: tuple[int, ...], refs: dict) -> TextEncoder:
    """The encoder on the meta device but for its embedding table, mapped in CPU memory."""
    with torch.device("meta"):
        encoder = TextEncoder(config, outputs)
    table = backend.load_tensors({TABLE: refs[TABLE]}, resident=False, device="cpu")
    assign(encoder.embed_tokens, {"weight": table[TABLE]}, "text_encoder")
    return encoder


def streamed_encoder(backend, config: Qwen3Config, outputs: tuple[int, ...], refs: dict):
    """The text encoder for when the device is short of memory: the embedding table stays mapped
    in CPU memory (a lookup there), and each layer's weights are uploaded when its turn comes and
    freed after it ran, so the device holds one layer at a time beside the rest of the model.
    Returns `encode(ids, length=None, pad_id=0) -> features` as TextEncoder's forward gives them."""
    encoder = _with_cpu_table(backend, config, outputs, refs)
    per_layer = [{name.split(".", 2)[2]: ref for name, ref in refs.items() if name.startswith(f"layers.{i}.")}
                 for i in range(len(encoder.layers))]

    @torch.inference_mode()
    def encode(ids: list[np.ndarray], length: int | None = None, pad_id: int = 0) -> list[torch.Tensor]:
        x, cos, sin, mask = encoder.embed(ids, backend.device, backend.torch_dtype, length=length, pad_id=pad_id)
        states = {0: x}  # hidden state 0 is the embeddings (a one-layer encoder's hidden_states[-2])
        for k, (layer, layer_refs) in enumerate(zip(encoder.layers, per_layer), start=1):
            x = assign(layer, backend.load_tensors(layer_refs, resident=False), "text_encoder")(x, cos, sin, mask)
            layer.to("meta")  # frees this layer's device copy
            if k in encoder.outputs:
                states[k] = x
        return encoder.features(states, ids, length)

    return encode
