"""What AutoencoderKLFlux2 adds around the shared AutoencoderKL encoder and decoder, on MLX:
2x2 patching of the latents and their BatchNorm statistics.

# Same as torch/vae.py (channels-first latents, as on torch).
"""

from __future__ import annotations

import mlx.core as mx


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
