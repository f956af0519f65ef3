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


def _resnet(prefix: str, cin: int, cout: int) -> Shapes:
    shapes: Shapes = {
        f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
        f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
        f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
        f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,),
    }
    if cin != cout:
        shapes[f"{prefix}.conv_shortcut.weight"] = (cout, cin, 1, 1)
        shapes[f"{prefix}.conv_shortcut.bias"] = (cout,)
    return shapes


def vae_encoder_shapes(c: VaeConfig) -> Shapes:
    """The AutoencoderKL encoder (double_z) and the quant conv: what a reference image goes through."""
    channels = list(c.block_out_channels)
    top, lat = channels[-1], c.latent_channels
    shapes: Shapes = {"encoder.conv_in.weight": (channels[0], c.in_channels, 3, 3), "encoder.conv_in.bias": (channels[0],)}
    cin = channels[0]
    for i, cout in enumerate(channels):
        for j in range(c.layers_per_block):
            shapes.update(_resnet(f"encoder.down_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout))
        cin = cout
        if i < len(channels) - 1:
            shapes[f"encoder.down_blocks.{i}.downsamplers.0.conv.weight"] = (cout, cout, 3, 3)
            shapes[f"encoder.down_blocks.{i}.downsamplers.0.conv.bias"] = (cout,)
    shapes.update(_resnet("encoder.mid_block.resnets.0", top, top))
    shapes.update(_resnet("encoder.mid_block.resnets.1", top, top))
    if c.mid_block_add_attention:
        a = "encoder.mid_block.attentions.0"
        shapes.update({f"{a}.group_norm.weight": (top,), f"{a}.group_norm.bias": (top,)})
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes.update({f"{a}.{name}.weight": (top, top), f"{a}.{name}.bias": (top,)})
    shapes.update({
        "encoder.conv_norm_out.weight": (top,), "encoder.conv_norm_out.bias": (top,),
        "encoder.conv_out.weight": (2 * lat, top, 3, 3), "encoder.conv_out.bias": (2 * lat,),
    })
    if c.use_quant_conv:
        shapes.update({"quant_conv.weight": (2 * lat, 2 * lat, 1, 1), "quant_conv.bias": (2 * lat,)})
    return shapes


def vae_norm_shapes(c: VaeConfig) -> Shapes:
    """The BatchNorm statistics of the 2x2-patchified latents."""
    return {"bn.running_mean": (c.packed_channels,), "bn.running_var": (c.packed_channels,)}


def component_tensors(source, config) -> dict[str, dict]:
    """Each component's tensors in `source` (a ModelSource), checked against the shapes `config`
    (a Flux2Config) implies; names without prefixes. Keys: transformer, vae_encoder, vae_decoder,
    vae_norm (the VAE folder split by what reads it)."""
    from ollimg.runtime.models.zimage.weights import vae_decoder_shapes
    from ollimg.runtime.source import select

    where = f"model {source.name}"
    transformer = select(source.tensors("transformer"), transformer_shapes(config.transformer), TRANSFORMER_IGNORED,
                         TRANSFORMER_FP8, f"{where}: transformer")
    vae = source.tensors("vae")
    parts = {"vae_encoder": vae_encoder_shapes(config.vae), "vae_decoder": vae_decoder_shapes(config.vae),
             "vae_norm": vae_norm_shapes(config.vae)}
    out = {"transformer": transformer}
    for part, shapes in parts.items():
        others = {name for other, s in parts.items() if other != part for name in s}
        ignored = re.compile("|".join([VAE_BN_IGNORED.pattern] + [re.escape(n) + "$" for n in sorted(others)]))
        out[part] = select(vae, shapes, ignored, re.compile(r"$^"), f"{where}: vae")
    return out
