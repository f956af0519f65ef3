"""The key maps of FLUX.2 [klein], as data: every tensor each component needs, with its shape.

Names are the upstream diffusers names inside each component folder. Each component lists what it
loads (`*_shapes`), what it may hold but never reads (`*_IGNORED`), and which linear weights may
be stored as float8 E4M3 with a per-output-channel float32 `<name>_scale` next to them (`FP8`: the
one definition `quantize/` also reads). Imports no torch or mlx.
"""

from __future__ import annotations

import re

from ollimg.runtime.models.flux2.config import TransformerConfig, VaeConfig

Shapes = dict[str, tuple[int, ...]]

TRANSFORMER_IGNORED = re.compile(r"$^")
# BatchNorm's step counter (int64) is training state.
VAE_BN_IGNORED = re.compile(r"^bn\.num_batches_tracked$")
# The attention and MLP linears of every double- and single-stream block: 97% of the weights.
# The embedders, the shared modulations, the output norm and proj_out stay in the compute dtype
# (they are small, run once per step, and set the dtype every block computes in).
TRANSFORMER_FP8 = re.compile(
    r"^(transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)"
    r"|ff\.linear_(in|out)|ff_context\.linear_(in|out))"
    r"|single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out))\.weight$"
)


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


def vae_extra_shapes(c: VaeConfig) -> Shapes:
    """What AutoencoderKLFlux2 holds beyond the AutoencoderKL encoder and decoder: the 1x1 quant
    convs and the BatchNorm statistics of the 2x2-patchified latents."""
    lat = c.latent_channels
    shapes: Shapes = {"bn.running_mean": (c.packed_channels,), "bn.running_var": (c.packed_channels,)}
    if c.use_quant_conv:
        shapes.update({"quant_conv.weight": (2 * lat, 2 * lat, 1, 1), "quant_conv.bias": (2 * lat,)})
    if c.use_post_quant_conv:
        shapes.update({"post_quant_conv.weight": (lat, lat, 1, 1), "post_quant_conv.bias": (lat,)})
    return shapes
