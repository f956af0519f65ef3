"""Where the decoder's tiles go and how they blend, in numpy (both backends tile alike)."""

from __future__ import annotations

import numpy as np


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
