"""AutoencoderKLFlux2 on MLX: the AutoencoderKL encoder (for reference images) and what FLUX.2
adds around the shared decoder: 2x2 patching of the latents and their BatchNorm statistics.

# Same as torch/vae.py, channels-last like the MLX decoder: the encoder takes (B, H, W, 3) pixels
# and returns channels-first latents (B, latent, H/8, W/8), the layout the transformer side uses.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ollimg.runtime.models.flux2.config import VaeConfig
from ollimg.runtime.models.zimage.mlx.vae import GroupNorm, MidBlock, ResnetBlock


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one zero row and column at the bottom and right (diffusers' Downsample2D, padding 0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def __call__(self, x: mx.array) -> mx.array:  # (B, H, W, C) -> (B, H/2, W/2, C)
        return self.conv(mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)]))


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock(cin if j == 0 else cout, cout, groups) for j in range(layers)]
        self.downsamplers = [Downsample(cout)] if downsample else []

    def __call__(self, x: mx.array) -> mx.array:
        for resnet in self.resnets:
            x = resnet(x)
        for down in self.downsamplers:
            x = down(x)
        return x


class Encoder(nn.Module):
    """diffusers' vae.Encoder with double_z: pixels -> (mean, logvar) of the latent."""

    def __init__(self, c: VaeConfig):
        super().__init__()
        channels, g = list(c.block_out_channels), c.norm_num_groups
        self.conv_in = nn.Conv2d(c.in_channels, channels[0], 3, padding=1)
        self.down_blocks = [
            DownBlock(channels[max(i - 1, 0)], cout, c.layers_per_block, g, downsample=i < len(channels) - 1)
            for i, cout in enumerate(channels)
        ]
        self.mid_block = MidBlock(channels[-1], g, c.mid_block_add_attention)
        self.conv_norm_out = GroupNorm(g, channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], 2 * c.latent_channels, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(self.mid_block(x))))


class VaeEncoder(nn.Module):
    """Pixels (B, H, W, 3) in [-1, 1] -> the latent distribution's mode (its mean), (B, latent, H/8, W/8)."""

    def __init__(self, c: VaeConfig):
        super().__init__()
        self.latent_channels = c.latent_channels
        self.encoder = Encoder(c)
        if c.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1)

    def __call__(self, x: mx.array) -> mx.array:
        moments = self.encoder(x.astype(self.encoder.conv_in.weight.dtype))
        if "quant_conv" in self:
            moments = self.quant_conv(moments)
        return moments[..., : self.latent_channels].transpose(0, 3, 1, 2)


def patchify(z: mx.array) -> mx.array:
    """(B, C, H, W) -> (B, 4C, H/2, W/2), channel c * 4 + 2 * row + column of each 2x2 patch."""
    B, C, H, W = z.shape
    return z.reshape(B, C, H // 2, 2, W // 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(B, 4 * C, H // 2, W // 2)


def unpatchify(z: mx.array) -> mx.array:
    """The inverse of `patchify`."""
    B, C4, h, w = z.shape
    return z.reshape(B, C4 // 4, 2, 2, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(B, C4 // 4, 2 * h, 2 * w)


class LatentNorm:
    """The VAE's BatchNorm statistics over patchified latents: what the transformer sees is normalised."""

    def __init__(self, mean: mx.array, var: mx.array, eps: float):
        self.mean = mean.astype(mx.float32)[None, :, None, None]  # (1, 4C, 1, 1)
        self.std = mx.sqrt(var.astype(mx.float32) + eps)[None, :, None, None]

    def normalize(self, z: mx.array) -> mx.array:
        return (z - self.mean.astype(z.dtype)) / self.std.astype(z.dtype)

    def denormalize(self, z: mx.array) -> mx.array:
        return z * self.std.astype(z.dtype) + self.mean.astype(z.dtype)
