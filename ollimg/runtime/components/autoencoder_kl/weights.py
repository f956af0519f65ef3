"""The AutoencoderKL decoder's and encoder's key maps as data. Imports no torch or mlx."""

from __future__ import annotations

import re

from ollimg.runtime.components.autoencoder_kl.config import AutoencoderKLConfig

Shapes = dict[str, tuple[int, ...]]

# Held by the checkpoint, not read by the decoder.
DECODER_IGNORED = re.compile(r"^(encoder\..*|quant_conv\..*)$")
# Held by the checkpoint, not read by the encoder.
ENCODER_IGNORED = re.compile(r"^(decoder\..*|post_quant_conv\..*)$")


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


def decoder_shapes(c: AutoencoderKLConfig) -> Shapes:
    channels = list(reversed(c.decoder_channels))
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
    bottom = c.decoder_channels[0]
    shapes.update({
        "decoder.conv_norm_out.weight": (bottom,), "decoder.conv_norm_out.bias": (bottom,),
        "decoder.conv_out.weight": (c.out_channels, bottom, 3, 3), "decoder.conv_out.bias": (c.out_channels,),
    })
    return shapes


def encoder_shapes(c: AutoencoderKLConfig) -> Shapes:
    """The encoder (double_z: mean and log-variance) and the quant conv: what an input image goes through."""
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
