"""Z-Image sequence layout in numpy: padding to 32, 3-axis position ids, RoPE angles.

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
