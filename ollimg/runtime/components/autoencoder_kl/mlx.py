"""The AutoencoderKL decoder (diffusers' AutoencoderKL.decode) on MLX, and its encoder
(channels-last pixels in, channels-first latents out). Same as torch.py, large images in strips
in lockstep as there (`tiles.py`).

Parameter names are diffusers' `decoder.*` (and `post_quant_conv.*` when the config uses one), so
the stored names load as they are; only conv kernels change layout (torch OIHW -> MLX OHWI, see
`mlx_layout`). MLX convolutions are channels-last: the decoder takes channels-first latents like the reference
and returns channels-last pixels, the layout images have. GroupNorm statistics are computed in
float32 whatever the weight dtype (such VAEs are unusable in half precision otherwise).
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from ollimg.runtime.components.autoencoder_kl.config import AutoencoderKLConfig
from ollimg.runtime.components.autoencoder_kl.tiles import STRIP_ELEMENTS, halo, strips
from ollimg.runtime.mlx_backend import evaluate
from ollimg.runtime.mlx_math import attention, silu

ATTENTION_SCORES = 1 << 28  # query chunks keep the score matrix at most this many values


class GroupNorm(nn.Module):
    def __init__(self, groups: int, channels: int, eps: float = 1e-6):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = mx.ones((channels,))
        self.bias = mx.zeros((channels,))

    def __call__(self, x: mx.array) -> mx.array:  # (B, H, W, C)
        b, h, w, c = x.shape
        g = x.astype(mx.float32).reshape(b, h * w, self.groups, c // self.groups)
        mean = g.mean(axis=(1, 3), keepdims=True)
        var = ((g - mean) ** 2).mean(axis=(1, 3), keepdims=True)
        g = (g - mean) * mx.rsqrt(var + self.eps)
        out = g.reshape(b, h, w, c) * self.weight.astype(mx.float32) + self.bias.astype(mx.float32)
        return out.astype(x.dtype)


def group_stats(norm: GroupNorm, x: mx.array, rows: list[tuple[int, int]]) -> tuple[mx.array, mx.array]:
    """`norm` over all of x (B, H, W, C) as a float32 scale and shift per (batch, channel), (B, 1, 1, C)
    each: the statistics read strip by strip (two passes), folded with the weight and bias."""
    b, h, w, c = x.shape
    g = norm.groups
    part = lambda a, e: x[:, a:e].astype(mx.float32).reshape(b, -1, g, c // g)  # noqa: E731
    count = h * w * (c // g)
    total = mx.zeros((b, g), dtype=mx.float32)
    for a, e in rows:
        total = total + part(a, e).sum(axis=(1, 3))
        evaluate(total)  # one strip's float32 copy at a time
    mean, total = total / count, mx.zeros((b, g), dtype=mx.float32)
    for a, e in rows:
        total = total + ((part(a, e) - mean[:, None, :, None]) ** 2).sum(axis=(1, 3))
        evaluate(total)
    rstd = mx.repeat(mx.rsqrt(total / count + norm.eps), c // g, axis=1)  # (B, C)
    scale = rstd * norm.weight.astype(mx.float32)
    shift = norm.bias.astype(mx.float32) - mx.repeat(mean, c // g, axis=1) * scale
    return scale[:, None, None, :], shift[:, None, None, :]


def normed(x: mx.array, stats: tuple[mx.array, mx.array]) -> mx.array:
    """A GroupNorm of a strip of the tensor whose `group_stats` these are, computed in float32."""
    scale, shift = stats
    return (x.astype(mx.float32) * scale + shift).astype(x.dtype)


def conv_rows(conv: nn.Conv2d, x: mx.array, start: int, end: int, pre) -> mx.array:
    """Rows [start, end) of conv(pre(x)) (stride 1, same padding), from those rows of x and the halo."""
    lo, hi = halo(start, end, x.shape[1], conv.weight.shape[1] // 2)
    return conv(pre(x[:, lo:hi]))[:, start - lo: end - lo]


def norm_conv(norm: GroupNorm, conv: nn.Conv2d, x: mx.array, elements: int) -> mx.array:
    """conv(silu(norm(x))) strip by strip, the GroupNorm statistics taken over all of x."""
    b, h, w, c = x.shape
    stats = group_stats(norm, x, strips(h, w, c, elements))
    out = mx.zeros((b, h, w, conv.weight.shape[0]), dtype=x.dtype)
    for a, e in strips(h, w, max(c, conv.weight.shape[0]), elements):
        out[:, a:e] = conv_rows(conv, x, a, e, lambda t: silu(normed(t, stats)))
        evaluate(out)  # one strip at a time
    return out


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.conv_shortcut = nn.Conv2d(c_in, c_out, 1)

    def __call__(self, x: mx.array) -> mx.array:  # (B, H, W, C_in) -> (B, H, W, C_out)
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(silu(self.norm2(h)))
        if "conv_shortcut" in self:
            x = self.conv_shortcut(x)
        return x + h

    def lockstep(self, x: mx.array, elements: int) -> mx.array:
        """__call__ strip by strip with the whole image's GroupNorm statistics."""
        h = norm_conv(self.norm1, self.conv1, x, elements)
        h = norm_conv(self.norm2, self.conv2, h, elements)
        if "conv_shortcut" not in self:
            return x + h
        for a, e in strips(x.shape[1], x.shape[2], x.shape[3] + h.shape[3], elements):
            h[:, a:e] = h[:, a:e] + self.conv_shortcut(x[:, a:e])
            evaluate(h)
        return h


class Attention(nn.Module):
    """Single-head self-attention over all pixels, with its own GroupNorm and a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = GroupNorm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = [nn.Linear(channels, channels)]

    def __call__(self, x: mx.array) -> mx.array:  # (B, H, W, C)
        b, h, w, c = x.shape
        t = self.group_norm(x).reshape(b, 1, h * w, c)  # (B, 1, HW, C): one head
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        n = max(1, ATTENTION_SCORES // (h * w))  # queries per chunk: large images attend in chunks
        o = mx.concatenate([attention(q[:, :, i: i + n], k, v, 1.0 / math.sqrt(c))
                            for i in range(0, h * w, n)], axis=2)
        return x + self.to_out[0](o).reshape(b, h, w, c)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = [ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)]
        self.attentions = [Attention(channels, groups)] if attention else []

    def __call__(self, x: mx.array) -> mx.array:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:  # (B, H, W, C) -> (B, 2H, 2W, C), nearest
        b, h, w, c = x.shape
        x = mx.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
        return self.conv(x)

    def lockstep(self, x: mx.array, elements: int) -> mx.array:
        """__call__ strip by strip: rows [a, e) of x give rows [2a, 2e), from one more row on each side."""
        b, h, w, c = x.shape
        out = mx.zeros((b, 2 * h, 2 * w, c), dtype=x.dtype)
        for a, e in strips(h, 4 * w, c, elements):
            lo, hi = halo(a, e, h)
            out[:, 2 * a: 2 * e] = self(x[:, lo:hi])[:, 2 * (a - lo): 2 * (e - lo)]
            evaluate(out)
        return out


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(layers)]
        self.upsamplers = [Upsample(c_out)] if upsample else []

    def __call__(self, x: mx.array) -> mx.array:
        for resnet in self.resnets:
            x = resnet(x)
        for up in self.upsamplers:
            x = up(x)
        return x

    def lockstep(self, x: mx.array, elements: int) -> mx.array:
        for resnet in self.resnets:
            x = resnet.lockstep(x, elements)
        for up in self.upsamplers:
            x = up.lockstep(x, elements)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        chans = list(reversed(cfg.decoder_channels))
        groups = cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[0], 3, padding=1)
        self.mid_block = MidBlock(chans[0], groups, cfg.mid_block_add_attention)
        self.up_blocks = [
            UpBlock(chans[max(i - 1, 0)], chans[i], cfg.layers_per_block + 1, groups, i < len(chans) - 1)
            for i in range(len(chans))
        ]
        self.conv_norm_out = GroupNorm(groups, chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], cfg.out_channels, 3, padding=1)

    def __call__(self, z: mx.array) -> mx.array:  # (B, h, w, latent) -> (B, 8h, 8w, 3)
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(silu(self.conv_norm_out(x)))

    def lockstep(self, z: mx.array, elements: int) -> mx.array:
        """__call__ for a large latent: the latent-resolution layers whole (the attention sees every
        cell), the rest strip by strip in lockstep (tiles.py)."""
        x = self.mid_block(self.conv_in(z))
        evaluate(x)
        for block in self.up_blocks:
            x = block.lockstep(x, elements)
        return norm_conv(self.conv_norm_out, self.conv_out, x, elements)


class VaeDecoder(nn.Module):
    """`decode(z)`: latents already unscaled (z / scaling_factor + shift_factor) -> pixels in [-1, 1].

    Latents larger than `tile` cells a side go in strips in lockstep, as on the torch backend.
    """

    def __init__(self, cfg):
        super().__init__()
        self.scale = cfg.scale
        self.decoder = Decoder(cfg)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.tile = 128  # the largest latent side decoded whole (1024 pixels at 8 pixels a cell)
        self.strip = STRIP_ELEMENTS

    def decode(self, z: mx.array) -> mx.array:  # (B, 16, h, w) -> (B, 8h, 8w, 3), channels last
        z = z.astype(self.decoder.conv_in.weight.dtype).transpose(0, 2, 3, 1)
        if "post_quant_conv" in self:
            z = self.post_quant_conv(z)
        if max(z.shape[1:3]) <= self.tile:
            return self.decoder(z)
        return self.decoder.lockstep(z, self.strip)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one zero row and column at the bottom and right (diffusers' Downsample2D, padding 0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def __call__(self, x: mx.array) -> mx.array:  # (B, H, W, C) -> (B, H/2, W/2, C)
        return self.conv(mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)]))

    def lockstep(self, x: mx.array, elements: int) -> mx.array:
        """__call__ strip by strip: output rows [a, e) read input rows [2a, 2e + 1) (the last strip pads)."""
        b, h, w, c = x.shape
        out = mx.zeros((b, h // 2, w // 2, c), dtype=x.dtype)
        for a, e in strips(h // 2, 4 * w, c, elements):
            out[:, a:e] = self(x[:, 2 * a: min(2 * e + 1, h)])
            evaluate(out)
        return out


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

    def lockstep(self, x: mx.array, elements: int) -> mx.array:
        for resnet in self.resnets:
            x = resnet.lockstep(x, elements)
        for down in self.downsamplers:
            x = down.lockstep(x, elements)
        return x


class Encoder(nn.Module):
    """diffusers' vae.Encoder with double_z: pixels -> (mean, logvar) of the latent."""

    def __init__(self, c: AutoencoderKLConfig):
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
        return self.conv_out(silu(self.conv_norm_out(self.mid_block(x))))

    def lockstep(self, x: mx.array, elements: int) -> mx.array:
        """__call__ for a large image: strip by strip in lockstep down to latent resolution, then whole."""
        b, h, w, _ = x.shape
        cout = self.conv_in.weight.shape[0]
        y = mx.zeros((b, h, w, cout), dtype=x.dtype)
        for a, e in strips(h, w, cout, elements):
            y[:, a:e] = conv_rows(self.conv_in, x, a, e, lambda t: t)
            evaluate(y)
        for block in self.down_blocks:
            y = block.lockstep(y, elements)
        return self.conv_out(silu(self.conv_norm_out(self.mid_block(y))))


class VaeEncoder(nn.Module):
    """Pixels (B, H, W, 3) in [-1, 1] -> the latent distribution's mode (its mean), (B, latent, H/8, W/8)."""

    def __init__(self, c: AutoencoderKLConfig):
        super().__init__()
        self.latent_channels, self.scale = c.latent_channels, c.scale
        self.encoder = Encoder(c)
        if c.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1)
        self.tile = 128  # the largest latent side encoded whole (1024 pixels at 8 pixels a cell)
        self.strip = STRIP_ELEMENTS

    def __call__(self, x: mx.array) -> mx.array:
        return self.moments(x)[:, : self.latent_channels]

    def moments(self, x: mx.array) -> mx.array:
        """The latent distribution: mean and log-variance, (B, 2 * latent, H/8, W/8)."""
        x = x.astype(self.encoder.conv_in.weight.dtype)
        whole = max(x.shape[1:3]) <= self.tile * self.scale
        moments = self.encoder(x) if whole else self.encoder.lockstep(x, self.strip)
        if "quant_conv" in self:
            moments = self.quant_conv(moments)
        return moments.transpose(0, 3, 1, 2)


def mlx_layout(name: str, value: mx.array) -> mx.array:
    """A stored (torch-layout) VAE weight in MLX layout: conv kernels OIHW -> OHWI."""
    return value.transpose(0, 2, 3, 1) if value.ndim == 4 else value
