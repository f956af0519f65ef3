"""The Qwen3 key map as data: the tensors the first `layers` decoder layers read, with shapes.

Names are transformers' without the `model.` prefix the checkpoint stores them under. The layers
past the last hidden state a family uses, the final norm and lm_head are held but never read.
Imports no torch or mlx.
"""

from __future__ import annotations

import re

from ollimg.runtime.components.qwen3.config import Qwen3Config

PREFIX = "model."
Shapes = dict[str, tuple[int, ...]]

# The linear weights that may be stored as float8 (names as stored, with the prefix).
FP8 = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight")


def ignored(config: Qwen3Config, layers: int) -> re.Pattern:
    unused = "|".join(str(i) for i in range(layers, config.num_hidden_layers)) or "$^"
    return re.compile(rf"^(lm_head\.weight|norm\.weight|layers\.({unused})\..*)$")


def shapes(c: Qwen3Config, layers: int) -> Shapes:
    """Every tensor the first `layers` decoder layers and the embedding read."""
    h, hd = c.hidden_size, c.head_dim
    out: Shapes = {"embed_tokens.weight": (c.vocab_size, h)}
    for i in range(layers):
        p = f"layers.{i}"
        out.update({
            f"{p}.input_layernorm.weight": (h,),
            f"{p}.post_attention_layernorm.weight": (h,),
            f"{p}.self_attn.q_proj.weight": (c.num_attention_heads * hd, h),
            f"{p}.self_attn.k_proj.weight": (c.num_key_value_heads * hd, h),
            f"{p}.self_attn.v_proj.weight": (c.num_key_value_heads * hd, h),
            f"{p}.self_attn.o_proj.weight": (h, c.num_attention_heads * hd),
            f"{p}.self_attn.q_norm.weight": (hd,),
            f"{p}.self_attn.k_norm.weight": (hd,),
            f"{p}.mlp.gate_proj.weight": (c.intermediate_size, h),
            f"{p}.mlp.up_proj.weight": (c.intermediate_size, h),
            f"{p}.mlp.down_proj.weight": (h, c.intermediate_size),
        })
    return out
