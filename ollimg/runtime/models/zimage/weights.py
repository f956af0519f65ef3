"""Z-Image's key maps as data: every tensor each component needs, with its shape, and the FP8 set.

Names are the upstream diffusers/transformers names with the component's own prefix removed
(`text_encoder/model.layers.0...` -> `layers.0...`). Each component lists what it loads
(`*_shapes`) and what it may hold but never reads (`*_IGNORED`). FP8 holds, per component, the
linear weights that may be stored as float8 E4M3 with a per-output-channel float32 `<name>_scale`
(names as stored): the one definition `ollimg create --quantize fp8` and the loader both read.
Imports no torch or mlx.
"""

from __future__ import annotations

import re

from ollimg.runtime.components.autoencoder_kl import weights as vae_weights
from ollimg.runtime.components.qwen3 import weights as qwen3_weights
from ollimg.runtime.models.zimage.config import TransformerConfig, ZImageConfig
from ollimg.runtime.source import Shapes, select

TRANSFORMER_IGNORED = re.compile(r"$^")
FP8 = {
    "transformer": re.compile(r"(layers|noise_refiner|context_refiner)\.\d+\."
                              r"(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])\.weight"),
    "text_encoder": qwen3_weights.FP8,
}
NO_FP8 = re.compile(r"$^")


def _block(prefix: str, c: TransformerConfig, modulated: bool) -> Shapes:
    d, hd = c.dim, c.head_dim
    shapes: Shapes = {
        f"{prefix}.attention.to_q.weight": (d, d),
        f"{prefix}.attention.to_k.weight": (d, d),
        f"{prefix}.attention.to_v.weight": (d, d),
        f"{prefix}.attention.to_out.0.weight": (d, d),
        f"{prefix}.feed_forward.w1.weight": (c.ffn_dim, d),
        f"{prefix}.feed_forward.w2.weight": (d, c.ffn_dim),
        f"{prefix}.feed_forward.w3.weight": (c.ffn_dim, d),
        f"{prefix}.attention_norm1.weight": (d,),
        f"{prefix}.attention_norm2.weight": (d,),
        f"{prefix}.ffn_norm1.weight": (d,),
        f"{prefix}.ffn_norm2.weight": (d,),
    }
    if c.qk_norm:
        shapes[f"{prefix}.attention.norm_q.weight"] = (hd,)
        shapes[f"{prefix}.attention.norm_k.weight"] = (hd,)
    if modulated:
        shapes[f"{prefix}.adaLN_modulation.0.weight"] = (4 * d, c.adaln_dim)
        shapes[f"{prefix}.adaLN_modulation.0.bias"] = (4 * d,)
    return shapes


def transformer_shapes(c: TransformerConfig) -> Shapes:
    d, p = c.dim, c.patch_size
    patch = p * p * c.all_f_patch_size[0] * c.in_channels
    key = f"{p}-{c.all_f_patch_size[0]}"
    shapes: Shapes = {
        f"all_x_embedder.{key}.weight": (d, patch),
        f"all_x_embedder.{key}.bias": (d,),
        f"all_final_layer.{key}.linear.weight": (patch, d),
        f"all_final_layer.{key}.linear.bias": (patch,),
        f"all_final_layer.{key}.adaLN_modulation.1.weight": (d, c.adaln_dim),
        f"all_final_layer.{key}.adaLN_modulation.1.bias": (d,),
        "t_embedder.mlp.0.weight": (1024, 256),
        "t_embedder.mlp.0.bias": (1024,),
        "t_embedder.mlp.2.weight": (c.adaln_dim, 1024),
        "t_embedder.mlp.2.bias": (c.adaln_dim,),
        "cap_embedder.0.weight": (c.cap_feat_dim,),
        "cap_embedder.1.weight": (d, c.cap_feat_dim),
        "cap_embedder.1.bias": (d,),
        "x_pad_token": (1, d),
        "cap_pad_token": (1, d),
    }
    for i in range(c.n_refiner_layers):
        shapes.update(_block(f"noise_refiner.{i}", c, modulated=True))
        shapes.update(_block(f"context_refiner.{i}", c, modulated=False))
    for i in range(c.n_layers):
        shapes.update(_block(f"layers.{i}", c, modulated=True))
    return shapes


def component_tensors(source, config: ZImageConfig) -> tuple[dict, dict, dict]:
    """The text encoder's, transformer's and VAE decoder's tensors in `source` (a ModelSource),
    each checked against the shapes `config` implies; names without prefixes."""
    where = f"model {source.name}"
    layers = max(config.text_encoder_outputs)
    text_encoder = select(source.tensors("text_encoder"), qwen3_weights.shapes(config.text_encoder, layers),
                          qwen3_weights.ignored(config.text_encoder, layers), FP8["text_encoder"],
                          f"{where}: text_encoder", strip=qwen3_weights.PREFIX)
    transformer = select(source.tensors("transformer"), transformer_shapes(config.transformer), TRANSFORMER_IGNORED,
                         FP8["transformer"], f"{where}: transformer")
    vae = select(source.tensors("vae"), vae_weights.decoder_shapes(config.vae), vae_weights.DECODER_IGNORED, NO_FP8,
                 f"{where}: vae")
    return text_encoder, transformer, vae


def encoder_tensors(source, config: ZImageConfig) -> dict | None:
    """The VAE encoder's tensors (for input images), checked; None when the model holds no encoder."""
    vae = source.tensors("vae")
    if "encoder.conv_in.weight" not in vae:
        return None
    return select(vae, vae_weights.encoder_shapes(config.vae), vae_weights.ENCODER_IGNORED, NO_FP8,
                  f"model {source.name}: vae")
