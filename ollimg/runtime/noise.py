"""Seeded initial noise in numpy: the same seed gives the same image on every backend."""

from __future__ import annotations

import numpy as np


def noise(seed: int, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 [n, *shape]: image i from PCG64(seed + i)."""
    return np.stack([np.random.Generator(np.random.PCG64(seed + i)).standard_normal(shape, dtype=np.float32)
                     for i in range(n)])
