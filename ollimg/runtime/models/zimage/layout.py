"""Z-Image sequence layout in numpy: padding to 32, 3-axis position ids, RoPE angles, noise shapes,
and where the VAE's tiles go and how they blend.

Shared by the torch and mlx backends. Imports no torch or mlx.
"""

from __future__ import annotations

import numpy as np

from ollimg.runtime.models.zimage.config import TransformerConfig

SEQ_MULTI_OF = 32


def padded(n: int) -> int:
    return n + (-n) % SEQ_MULTI_OF


def caption_positions(n: int) -> np.ndarray:
    """int64 [padded(n), 3]: (1 + k, 0, 0); the pad slots continue the sequence."""
    k = np.arange(padded(n), dtype=np.int64)
    return np.stack([1 + k, np.zeros_like(k), np.zeros_like(k)], axis=1)


def image_positions(caption_padded: int, h_tokens: int, w_tokens: int) -> np.ndarray:
    """int64 [padded(h*w), 3]: (caption_padded + 1, h, w) row-major; pad slots are (0, 0, 0)."""
    hh, ww = np.meshgrid(np.arange(h_tokens), np.arange(w_tokens), indexing="ij")
    n = h_tokens * w_tokens
    ids = np.zeros((padded(n), 3), dtype=np.int64)
    ids[:n, 0] = caption_padded + 1
    ids[:n, 1] = hh.reshape(-1)
    ids[:n, 2] = ww.reshape(-1)
    return ids


class Rope:
    """RoPE angles per position id, float32 [L, head_dim / 2]: freq_j = 1/theta^(2j/d) in float64."""

    def __init__(self, config: TransformerConfig):
        self.tables = []
        for d, length in zip(config.axes_dims, config.axes_lens):
            freqs = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
            self.tables.append(np.outer(np.arange(length, dtype=np.float64), freqs).astype(np.float32))

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return np.concatenate([table[ids[:, i]] for i, table in enumerate(self.tables)], axis=1)


def noise(seed: int, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 [n, *shape]: image i from PCG64(seed + i), the same on every backend."""
    return np.stack([np.random.Generator(np.random.PCG64(seed + i)).standard_normal(shape, dtype=np.float32)
                     for i in range(n)])


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """First cells of the tiles along one side: every `stride`, the last one flush with the end."""
    if size <= tile:
        return [0]
    return list(range(0, size - tile, stride)) + [size - tile]


def tile_ramp(h: int, w: int, overlap: int, top: bool, left: bool, bottom: bool, right: bool) -> np.ndarray:
    """float32 blend weights (h, w): rising over the overlap on the sides that have a neighbour."""

    def axis(n: int, start: bool, end: bool) -> np.ndarray:
        r = np.ones(n, dtype=np.float32)
        ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        if start:
            r[:overlap] = ramp
        if end:
            r[n - overlap:] = np.minimum(r[n - overlap:], ramp[::-1])
        return r

    return axis(h, top, bottom)[:, None] * axis(w, left, right)[None, :]
