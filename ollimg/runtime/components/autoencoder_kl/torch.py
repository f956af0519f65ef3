"""The AutoencoderKL decoder in torch (AutoencoderKL's decoder numerics) and its encoder (for
input images).

Large images go through the high-resolution layers in strips, in lockstep (`tiles.py`): the
GroupNorm statistics are the whole image's, so the output is the whole-image computation's (no
seams; bound tested in tests/parity) while only one strip's temporaries exist at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ollimg.runtime.components.autoencoder_kl.config import AutoencoderKLConfig
from ollimg.runtime.components.autoencoder_kl.tiles import STRIP_ELEMENTS, halo, strips

ATTENTION_SCORES = 1 << 28  # query chunks keep the score matrix at most this many values


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm; on a GPU computed by `group_stats` and `normed` instead of torch's kernel,
    which reduces each (sample, group) in one thread block: 32 blocks for a batch of one, 46 of the
    93 ms of a 1024x1024 decode on an H200 (bench/results/profile_fp8_h200.txt,
    RowwiseMomentsCUDAKernel)."""

    def __init__(self, groups: int, channels: int):
        super().__init__(groups, channels, eps=1e-6)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda":
            return super().forward(x)  # the CPU's kernel is fast, and exact to float32's last bits
        return normed(x, group_stats(self, x, [(0, x.shape[2])]))


def group_stats(norm: GroupNorm, x: torch.Tensor, rows: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """`norm` over all of x as a float32 scale and shift per (batch, channel), (B, C) each: each
    group's sum and sum of squares read strip by strip (`rows`) in float32 straight from x's dtype
    (no copy of x; on a GPU each reduction spreads over the whole device), folded with the weight
    and bias as torch's GroupNorm does."""
    B, C, H, W = x.shape
    G = norm.num_groups
    sums = squares = 0
    for a, b in rows:
        part = x[:, :, a:b].unflatten(1, (G, C // G))  # (B, G, C/G, rows, W), a view
        sums = sums + part.sum((2, 3, 4), dtype=torch.float32)  # (B, G)
        squares = squares + torch.linalg.vector_norm(part, dim=(2, 3, 4), dtype=torch.float32).square()
    count = C // G * H * W
    mean = sums / count
    rstd = torch.rsqrt((squares / count - mean.square()).clamp_min(0) + norm.eps).repeat_interleave(C // G, 1)
    scale = rstd * norm.weight.float()  # (B, C)
    shift = norm.bias.float() - mean.repeat_interleave(C // G, 1) * scale
    return scale, shift


def normed(x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """A GroupNorm of x (or of a strip of the tensor whose `group_stats` these are): float32
    scale * x + shift per (batch, channel), rounded once to x's dtype (batch_norm's inference
    kernel, with mean 0 and variance 1, applies it without a float32 copy of x; torch 2.11 refuses
    eps 0, and 1 + 1e-30 rounds to 1 in float32 and float64, so eps 1e-30 changes nothing)."""
    scale, shift = stats
    B, C = scale.shape
    zeros = torch.zeros(B * C, device=x.device)
    y = F.batch_norm(x.reshape(1, B * C, *x.shape[2:]), zeros, torch.ones_like(zeros), scale.flatten(),
                     shift.flatten(), training=False, momentum=0.0, eps=1e-30)
    return y.reshape(x.shape)


def conv_rows(conv: nn.Conv2d, x: torch.Tensor, start: int, end: int, pre) -> torch.Tensor:
    """Rows [start, end) of conv(pre(x)) (stride 1, same padding), from those rows of x and the halo."""
    lo, hi = halo(start, end, x.shape[2], conv.padding[0])
    return conv(pre(x[:, :, lo:hi]))[:, :, start - lo: end - lo]


def norm_conv(norm: GroupNorm, conv: nn.Conv2d, x: torch.Tensor, elements: int) -> torch.Tensor:
    """conv(silu(norm(x))) strip by strip, the GroupNorm statistics taken over all of x."""
    B, C, H, W = x.shape
    stats = group_stats(norm, x, strips(H, W, C, elements))
    out = x.new_empty(B, conv.out_channels, H, W)
    for a, b in strips(H, W, max(C, conv.out_channels), elements):
        out[:, :, a:b] = conv_rows(conv, x, a, b, lambda t: F.silu(normed(t, stats)))
    return out


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

    def lockstep(self, x: torch.Tensor, elements: int) -> torch.Tensor:
        """forward() strip by strip with the whole image's GroupNorm statistics; may overwrite x."""
        h = norm_conv(self.norm1, self.conv1, x, elements)
        h = norm_conv(self.norm2, self.conv2, h, elements)
        if self.conv_shortcut is None:
            return x.add_(h)
        for a, b in strips(x.shape[2], x.shape[3], x.shape[1] + h.shape[1], elements):
            h[:, :, a:b] += self.conv_shortcut(x[:, :, a:b])
        return h


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
        n = max(1, ATTENTION_SCORES // (H * W))  # queries per chunk: large images attend in chunks
        h = torch.cat([F.scaled_dot_product_attention(q[:, :, i: i + n], k, v) for i in range(0, H * W, n)], 2).squeeze(1)
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

    def lockstep(self, x: torch.Tensor, elements: int) -> torch.Tensor:
        """forward() strip by strip: rows [a, b) of x give rows [2a, 2b), from one more row on each side."""
        B, C, H, W = x.shape
        out = x.new_empty(B, C, 2 * H, 2 * W)
        for a, b in strips(H, 4 * W, C, elements):
            lo, hi = halo(a, b, H)
            out[:, :, 2 * a: 2 * b] = self(x[:, :, lo:hi])[:, :, 2 * (a - lo): 2 * (b - lo)]
        return out


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

    def lockstep(self, x: torch.Tensor, elements: int) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet.lockstep(x, elements)
        if self.upsamplers is not None:
            x = self.upsamplers[0].lockstep(x, elements)
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

    def lockstep(self, z: torch.Tensor, elements: int) -> torch.Tensor:
        """forward() for a large latent: the latent-resolution layers whole (the attention sees every
        cell), the rest strip by strip in lockstep (tiles.py)."""
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block.lockstep(x, elements)
        return norm_conv(self.conv_norm_out, self.conv_out, x, elements)


class VaeDecoder(nn.Module):
    """Latents -> pixels in [-1, 1] (before clamping); `decode` goes in strips when the latent is large."""

    def __init__(self, c: AutoencoderKLConfig):
        super().__init__()
        self.config = c
        self.decoder = Decoder(c)
        self.post_quant_conv = Conv(c.latent_channels, c.latent_channels, 1) if c.use_post_quant_conv else None
        self.tile = 128  # the largest latent side decoded whole (1024 pixels at 8 pixels a cell)
        self.strip = STRIP_ELEMENTS
        self.memory_format = torch.channels_last  # the layout `decode` runs in (stage_variants compares NCHW)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def channels_last(self) -> VaeDecoder:
        """Weights in NHWC, as `decode` takes its input: on a GPU, cuDNN's convolutions would otherwise
        copy each weight to NHWC per call. (A CPU keeps its memory-mapped NCHW weights: oneDNN
        reorders them itself, no slower.)"""
        return self.to(memory_format=torch.channels_last)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        # NHWC (channels_last) all the way down: cuDNN's own layout, without the NCHW<->NHWC copies
        # around each convolution (H200, 1024x1024: 49 -> 42.6 ms), and faster on the CPU too
        # (2 cores, the shapes model at 512x512: 1.57 -> 1.35 s; bench/README.md, 2026-12-03).
        z = z.contiguous(memory_format=self.memory_format)
        if max(z.shape[-2:]) <= self.tile:
            return self(z)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder.lockstep(z, self.strip)

    def pixels(self, z: torch.Tensor) -> torch.Tensor:
        """decode(z) as uint8 pixels (B, H, W, 3), still on the device (a quarter of the bytes to copy
        back): computed in float32, torch.round half to even as numpy's."""
        pixels = self.decode(z).float()
        return ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one zero row and column at the bottom and right (diffusers' Downsample2D, padding 0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)
        self.conv.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))

    def lockstep(self, x: torch.Tensor, elements: int) -> torch.Tensor:
        """forward() strip by strip: output rows [a, b) read input rows [2a, 2b + 1) (the last strip pads)."""
        B, C, H, W = x.shape
        out = x.new_empty(B, C, H // 2, W // 2)
        for a, b in strips(H // 2, 4 * W, C, elements):
            out[:, :, a:b] = self(x[:, :, 2 * a: min(2 * b + 1, H)])
        return out


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

    def lockstep(self, x: torch.Tensor, elements: int) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet.lockstep(x, elements)
        if self.downsamplers is not None:
            x = self.downsamplers[0].lockstep(x, elements)
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

    def lockstep(self, x: torch.Tensor, elements: int) -> torch.Tensor:
        """forward() for a large image: strip by strip in lockstep down to latent resolution, then whole."""
        B, _, H, W = x.shape
        y = x.new_empty(B, self.conv_in.out_channels, H, W)
        for a, b in strips(H, W, self.conv_in.out_channels, elements):
            y[:, :, a:b] = conv_rows(self.conv_in, x, a, b, lambda t: t)
        for block in self.down_blocks:
            y = block.lockstep(y, elements)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(y))))


class VaeEncoder(nn.Module):
    """Pixels (B, 3, H, W) in [-1, 1] -> the latent distribution's mode (its mean), (B, latent, H/8, W/8)."""

    def __init__(self, c: AutoencoderKLConfig):
        super().__init__()
        self.config = c
        self.encoder = Encoder(c)
        self.quant_conv = Conv(2 * c.latent_channels, 2 * c.latent_channels, 1) if c.use_quant_conv else None
        self.tile = 128  # the largest latent side encoded whole (1024 pixels at 8 pixels a cell)
        self.strip = STRIP_ELEMENTS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moments(x)[:, : self.config.latent_channels]

    def moments(self, x: torch.Tensor) -> torch.Tensor:
        """The latent distribution: mean and log-variance, (B, 2 * latent, H/8, W/8)."""
        whole = max(x.shape[-2:]) <= self.tile * self.config.scale
        moments = self.encoder(x) if whole else self.encoder.lockstep(x, self.strip)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments
