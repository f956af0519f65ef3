"""The AutoencoderKL decoder in torch (AutoencoderKL's decoder numerics), with tiled decoding,
and its encoder (for input images).

Large latents are decoded in overlapping tiles whose outputs are blended linearly across the
overlap, so peak memory depends on the tile size, not the image size. GroupNorm statistics are
then per tile, so tiled output differs slightly from untiled (bound tested in tests/parity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ollimg.runtime.components.autoencoder_kl.config import AutoencoderKLConfig
from ollimg.runtime.components.autoencoder_kl.tiles import tile_ramp, tile_starts


class GroupNorm(nn.GroupNorm):
    def __init__(self, groups: int, channels: int):
        super().__init__(groups, channels, eps=1e-6)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)


class Conv(nn.Conv2d):
    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__(cin, cout, kernel, padding=kernel // 2)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(groups, cin)
        self.conv1 = Conv(cin, cout, 3)
        self.norm2 = GroupNorm(groups, cout)
        self.conv2 = Conv(cout, cout, 3)
        self.conv_shortcut = Conv(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Linear(nn.Linear):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)


class Attention(nn.Module):
    """Single-head self-attention over all pixels, with a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = GroupNorm(groups, channels)
        self.to_q, self.to_k, self.to_v = Linear(channels, channels), Linear(channels, channels), Linear(channels, channels)
        self.to_out = nn.ModuleList([Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).view(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(h).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        h = self.to_out[0](h).transpose(1, 2).reshape(B, C, H, W)
        return x + h


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([Attention(channels, groups)]) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Nearest upsampling is exact in any dtype (no float32 round trip: that copy alone was
        # 1 GiB at 1024x1024).
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if j == 0 else cout, cout, groups) for j in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder(nn.Module):
    def __init__(self, c: AutoencoderKLConfig):
        super().__init__()
        channels = list(reversed(c.decoder_channels))
        g = c.norm_num_groups
        self.conv_in = Conv(c.latent_channels, channels[0], 3)
        self.mid_block = MidBlock(channels[0], g, c.mid_block_add_attention)
        self.up_blocks = nn.ModuleList([
            UpBlock(channels[max(i - 1, 0)], cout, c.layers_per_block + 1, g, upsample=i < len(channels) - 1)
            for i, cout in enumerate(channels)
        ])
        self.conv_norm_out = GroupNorm(g, c.decoder_channels[0])
        self.conv_out = Conv(c.decoder_channels[0], c.out_channels, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VaeDecoder(nn.Module):
    """Latents -> pixels in [-1, 1] (before clamping); `decode` tiles when the latent is large."""

    def __init__(self, c: AutoencoderKLConfig):
        super().__init__()
        self.config = c
        self.decoder = Decoder(c)
        self.post_quant_conv = Conv(c.latent_channels, c.latent_channels, 1) if c.use_post_quant_conv else None
        self.tile = 128  # latent cells per tile side (1024 pixels at 8 pixels a cell)
        self.overlap = 16  # latent cells shared by neighbouring tiles

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if max(z.shape[-2:]) <= self.tile:
            return self(z)
        return self._tiled(z)

    def _tiled(self, z: torch.Tensor) -> torch.Tensor:
        """Decode overlapping tiles and blend them with linear ramps; memory stays that of one tile."""
        B, _, h, w = z.shape
        s = self.config.scale
        stride = self.tile - self.overlap
        out = weight = None
        for top in tile_starts(h, self.tile, stride):
            for left in tile_starts(w, self.tile, stride):
                tile = self(z[:, :, top: top + self.tile, left: left + self.tile]).float()
                if out is None:
                    out = torch.zeros(B, tile.shape[1], h * s, w * s, device=z.device)
                    weight = torch.zeros(1, 1, h * s, w * s, device=z.device)
                ramp = torch.from_numpy(tile_ramp(tile.shape[-2], tile.shape[-1], self.overlap * s, top > 0, left > 0,
                                                  top + self.tile < h, left + self.tile < w)).to(z.device)[None, None]
                ys, xs = slice(top * s, top * s + tile.shape[-2]), slice(left * s, left * s + tile.shape[-1])
                out[:, :, ys, xs] += tile * ramp
                weight[:, :, ys, xs] += ramp
        return out / weight


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
        self.resnets = nn.ModuleList([ResnetBlock(cin if j == 0 else cout, cout, groups) for j in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample(cout)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class Encoder(nn.Module):
    """diffusers' vae.Encoder with double_z: pixels -> (mean, logvar) of the latent."""

    def __init__(self, c: AutoencoderKLConfig):
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

    def __init__(self, c: AutoencoderKLConfig):
        super().__init__()
        self.config = c
        self.encoder = Encoder(c)
        self.quant_conv = Conv(2 * c.latent_channels, 2 * c.latent_channels, 1) if c.use_quant_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moments(x)[:, : self.config.latent_channels]

    def moments(self, x: torch.Tensor) -> torch.Tensor:
        """The latent distribution: mean and log-variance, (B, 2 * latent, H/8, W/8)."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments
