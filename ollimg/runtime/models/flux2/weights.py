"""FLUX.2 [klein]'s key maps as data: every tensor each component needs, with its shape, and the FP8 set.

Names are the upstream diffusers/transformers names with the component's own prefix removed.
Each component lists what it loads (`*_shapes`) and what it may hold but never reads
(`*_IGNORED`). FP8 holds, per component, the linear weights that may be stored as float8 E4M3
with a per-output-channel float32 `<name>_scale` (names as stored): the one definition
`ollimg create --quantize fp8` and the loader both read. Imports no torch or mlx.
"""

from __future__ import annotations

import re

from ollimg.runtime.components.autoencoder_kl import weights as vae_weights
from ollimg.runtime.components.qwen3 import weights as qwen3_weights
from ollimg.runtime.models.flux2.config import Flux2Config, TransformerConfig
from ollimg.runtime.source import Shapes, select

TRANSFORMER_IGNORED = re.compile(r"$^")
FP8 = {
    # The attention and MLP linears of every double- and single-stream block: nearly all of the
    # weights. The embedders, the shared modulations, the output norm and proj_out stay in the
    # compute dtype (small, run once per step; proj_out also gives the compute dtype).
    "transformer": re.compile(r"(transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)"
                              r"|ff\.linear_(in|out)|ff_context\.linear_(in|out))"
                              r"|single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out))\.weight"),
    "text_encoder": qwen3_weights.FP8,
}
NO_FP8 = re.compile(r"$^")


def _double(prefix: str, c: TransformerConfig) -> Shapes:
    d, hd, m = c.dim, c.attention_head_dim, c.mlp_dim
    shapes: Shapes = {f"{prefix}.attn.{name}.weight": (d, d) for name in
                      ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")}
    for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
        shapes[f"{prefix}.attn.{norm}.weight"] = (hd,)
    for ff in ("ff", "ff_context"):
        shapes[f"{prefix}.{ff}.linear_in.weight"] = (2 * m, d)
        shapes[f"{prefix}.{ff}.linear_out.weight"] = (d, m)
    return shapes


def _single(prefix: str, c: TransformerConfig) -> Shapes:
    d, hd, m = c.dim, c.attention_head_dim, c.mlp_dim
    return {
        f"{prefix}.attn.to_qkv_mlp_proj.weight": (3 * d + 2 * m, d),
        f"{prefix}.attn.to_out.weight": (d, d + m),
        f"{prefix}.attn.norm_q.weight": (hd,),
        f"{prefix}.attn.norm_k.weight": (hd,),
    }


def transformer_shapes(c: TransformerConfig) -> Shapes:
    d = c.dim
    shapes: Shapes = {
        "time_guidance_embed.timestep_embedder.linear_1.weight": (d, c.timestep_guidance_channels),
        "time_guidance_embed.timestep_embedder.linear_2.weight": (d, d),
        "double_stream_modulation_img.linear.weight": (6 * d, d),
        "double_stream_modulation_txt.linear.weight": (6 * d, d),
        "single_stream_modulation.linear.weight": (3 * d, d),
        "x_embedder.weight": (d, c.in_channels),
        "context_embedder.weight": (d, c.joint_attention_dim),
        "norm_out.linear.weight": (2 * d, d),
        "proj_out.weight": (c.channels_out, d),
    }
    for i in range(c.num_layers):
        shapes.update(_double(f"transformer_blocks.{i}", c))
    for i in range(c.num_single_layers):
        shapes.update(_single(f"single_transformer_blocks.{i}", c))
    return shapes


def latent_norm_shapes(config: Flux2Config) -> Shapes:
    """The BatchNorm statistics of the 2x2-patchified latents (its int64 step counter is not read)."""
    channels = config.vae.latent_channels * config.latent_norm.patch_size[0] * config.latent_norm.patch_size[1]
    return {"bn.running_mean": (channels,), "bn.running_var": (channels,)}


def component_tensors(source, config: Flux2Config) -> dict[str, dict]:
    """Each component's tensors in `source` (a ModelSource), checked against the shapes `config`
    implies; names without prefixes. The VAE folder is split by what reads it: `vae_encoder`
    (reference images), `vae_decoder` and `latent_norm`; each selection ignores the others' tensors."""
    where = f"model {source.name}"
    layers = max(config.text_encoder_outputs)
    out = {
        "text_encoder": select(source.tensors("text_encoder"), qwen3_weights.shapes(config.text_encoder, layers),
                               qwen3_weights.ignored(config.text_encoder, layers), FP8["text_encoder"],
                               f"{where}: text_encoder", strip=qwen3_weights.PREFIX),
        "transformer": select(source.tensors("transformer"), transformer_shapes(config.transformer),
                              TRANSFORMER_IGNORED, FP8["transformer"], f"{where}: transformer"),
    }
    vae = source.tensors("vae")
    parts = {"vae_encoder": vae_weights.encoder_shapes(config.vae), "vae_decoder": vae_weights.decoder_shapes(config.vae),
             "latent_norm": latent_norm_shapes(config)}
    for part, shapes in parts.items():
        others = sorted(name for other, s in parts.items() if other != part for name in s)
        ignored = re.compile("(?:" + "|".join([r"bn\.num_batches_tracked"] + [re.escape(n) for n in others]) + ")$")
        out[part] = select(vae, shapes, ignored, NO_FP8, f"{where}: vae")
    return out
