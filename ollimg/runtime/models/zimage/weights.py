"""The key maps of Z-Image, as data: every tensor each component needs, with its shape.

Names are the upstream diffusers/transformers names with the component's own prefix removed
(`text_encoder/model.layers.0...` -> `layers.0...`). Each component lists what it loads
(`*_shapes`), what it may hold but never reads (`*_IGNORED`), and which linear weights may be
stored as float8 E4M3 with a per-output-channel float32 `<name>_scale` next to them (FP8). Imports
no torch or mlx.
"""

from __future__ import annotations

import re

from ollimg.runtime.models.zimage.config import TextEncoderConfig, TransformerConfig, VaeConfig

Shapes = dict[str, tuple[int, ...]]

TEXT_ENCODER_PREFIX = "model."
FP8_SCALE_SUFFIX = "_scale"  # `X.weight` F8_E4M3 comes with `X.weight_scale` F32 [out_features]

# Tensors a component may hold that the runtime does not read.
TRANSFORMER_IGNORED = re.compile(r"$^")
# Features are the hidden state before the last layer: the last layer and the final norm go unused.
TEXT_ENCODER_IGNORED_TEMPLATE = r"^(lm_head\.weight|norm\.weight|layers\.{last}\..*)$"
VAE_IGNORED = re.compile(r"^(encoder\..*|quant_conv\..*)$")
# Linear weights that may be float8 (the ones `ollimg create --quantize fp8` may choose from).
FP8 = re.compile(
    r"^((layers|noise_refiner|context_refiner)\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123]"
    r"|adaLN_modulation\.0)\.weight"
    r"|layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight)$"
)


def text_encoder_ignored(config: TextEncoderConfig) -> re.Pattern:
    return re.compile(TEXT_ENCODER_IGNORED_TEMPLATE.format(last=config.num_hidden_layers - 1))


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


def text_encoder_shapes(c: TextEncoderConfig) -> Shapes:
    """Every tensor the encoder reads: all layers but the last (its output is never used)."""
    h, hd = c.hidden_size, c.head_dim
    shapes: Shapes = {"embed_tokens.weight": (c.vocab_size, h)}
    for i in range(c.num_hidden_layers - 1):
        p = f"layers.{i}"
        shapes.update({
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


def vae_decoder_shapes(c: VaeConfig) -> Shapes:
    channels = list(reversed(c.block_out_channels))
    top, lat = channels[0], c.latent_channels
    shapes: Shapes = {"decoder.conv_in.weight": (top, lat, 3, 3), "decoder.conv_in.bias": (top,)}
    if c.use_post_quant_conv:
        shapes.update({"post_quant_conv.weight": (lat, lat, 1, 1), "post_quant_conv.bias": (lat,)})
    shapes.update(_resnet("decoder.mid_block.resnets.0", top, top))
    shapes.update(_resnet("decoder.mid_block.resnets.1", top, top))
    if c.mid_block_add_attention:
        a = "decoder.mid_block.attentions.0"
        shapes.update({f"{a}.group_norm.weight": (top,), f"{a}.group_norm.bias": (top,)})
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes.update({f"{a}.{name}.weight": (top, top), f"{a}.{name}.bias": (top,)})
    cin = top
    for i, cout in enumerate(channels):
        for j in range(c.layers_per_block + 1):
            shapes.update(_resnet(f"decoder.up_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout))
        cin = cout
        if i < len(channels) - 1:
            shapes[f"decoder.up_blocks.{i}.upsamplers.0.conv.weight"] = (cout, cout, 3, 3)
            shapes[f"decoder.up_blocks.{i}.upsamplers.0.conv.bias"] = (cout,)
    bottom = c.block_out_channels[0]
    shapes.update({
        "decoder.conv_norm_out.weight": (bottom,), "decoder.conv_norm_out.bias": (bottom,),
        "decoder.conv_out.weight": (c.out_channels, bottom, 3, 3), "decoder.conv_out.bias": (c.out_channels,),
    })
    return shapes


def component_tensors(source, config) -> tuple[dict, dict, dict]:
    """The text encoder's, transformer's and VAE decoder's tensors in `source` (a ModelSource),
    each checked against the shapes `config` (a ZImageConfig) implies; names without prefixes."""
    from ollimg.runtime.source import select  # source.py imports this module

    where = f"model {source.name}"
    text_encoder = select(source.tensors("text_encoder"), text_encoder_shapes(config.text_encoder),
                          text_encoder_ignored(config.text_encoder), FP8, f"{where}: text_encoder",
                          strip=TEXT_ENCODER_PREFIX)
    transformer = select(source.tensors("transformer"), transformer_shapes(config.transformer), TRANSFORMER_IGNORED,
                         FP8, f"{where}: transformer")
    vae = select(source.tensors("vae"), vae_decoder_shapes(config.vae), VAE_IGNORED, FP8, f"{where}: vae")
    return text_encoder, transformer, vae
