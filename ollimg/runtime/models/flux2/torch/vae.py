"""AutoencoderKLFlux2 in torch: the AutoencoderKL encoder (for reference images) and what FLUX.2
adds around the shared decoder: 2x2 patching of the latents and their BatchNorm statistics.

The decoder is the shared AutoencoderKL one (its `post_quant_conv` included). The encoder is built
from the same blocks; klein is its only user so far, so it lives here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ollimg.runtime.models.flux2.config import VaeConfig
from ollimg.runtime.models.zimage.torch.vae import Conv, GroupNorm, MidBlock, Resnet


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one zero row and column at the bottom and right (diffusers' Downsample2D, padding 0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)
        self.conv.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([Resnet(cin if j == 0 else cout, cout, groups) for j in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample(cout)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class Encoder(nn.Module):
    """diffusers' vae.Encoder with double_z: pixels -> (mean, logvar) of the latent."""

    def __init__(self, c: VaeConfig):
        super().__init__()
        channels, g = list(c.block_out_channels), c.norm_num_groups
        self.conv_in = Conv(c.in_channels, channels[0], 3)
        self.down_blocks = nn.ModuleList([
            DownBlock(channels[max(i - 1, 0)], cout, c.layers_per_block, g, downsample=i < len(channels) - 1)
            for i, cout in enumerate(channels)
        ])
        self.mid_block = MidBlock(channels[-1], g, c.mid_block_add_attention)
        self.conv_norm_out = GroupNorm(g, channels[-1])
        self.conv_out = Conv(channels[-1], 2 * c.latent_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class VaeEncoder(nn.Module):
    """Pixels (B, 3, H, W) in [-1, 1] -> the latent distribution's mode (its mean), (B, latent, H/8, W/8)."""

    def __init__(self, c: VaeConfig):
        super().__init__()
        self.config = c
        self.encoder = Encoder(c)
        self.quant_conv = Conv(2 * c.latent_channels, 2 * c.latent_channels, 1) if c.use_quant_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments[:, : self.config.latent_channels]


def patchify(z: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2), channel c * 4 + 2 * row + column of each 2x2 patch."""
    B, C, H, W = z.shape
    return z.view(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(B, 4 * C, H // 2, W // 2)


def unpatchify(z: torch.Tensor) -> torch.Tensor:
    """The inverse of `patchify`."""
    B, C4, h, w = z.shape
    return z.reshape(B, C4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(B, C4 // 4, 2 * h, 2 * w)


class LatentNorm:
    """The VAE's BatchNorm statistics over patchified latents: what the transformer sees is normalised."""

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, eps: float):
        self.mean = mean.float()[None, :, None, None]  # (1, 4C, 1, 1)
        self.std = torch.sqrt(var.float() + eps)[None, :, None, None]

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean.to(z.dtype)) / self.std.to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std.to(z.dtype) + self.mean.to(z.dtype)
