"""What AutoencoderKLFlux2 adds around the shared AutoencoderKL encoder and decoder, in torch:
2x2 patching of the latents and their BatchNorm statistics (what the transformer sees is normalised).
"""

from __future__ import annotations

import torch


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
