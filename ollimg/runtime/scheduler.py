"""Flow-matching Euler with a static shift (FlowMatchEulerDiscreteScheduler as Z-Image uses it).

float32 numpy arithmetic in the same order as diffusers, so sigmas and timesteps match bit for bit
or within one ulp. Imports no torch or mlx.
"""

from __future__ import annotations

import numpy as np

from ollimg.runtime.models.zimage.config import SchedulerConfig


def _linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32: the first half counts up from start, the second down from end."""
    if steps == 1:
        return np.array([start], dtype=np.float32)
    start32, end32 = np.float32(start), np.float32(end)
    step = (end32 - start32) / np.float32(steps - 1)
    i = np.arange(steps)
    up = start32 + step * i.astype(np.float32)
    down = end32 - step * (steps - 1 - i).astype(np.float32)
    return np.where(i < steps // 2, up, down).astype(np.float32)


def schedule(steps: int, config: SchedulerConfig) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas float32 [steps + 1] ending in 0, timesteps float32 [steps]) for Z-Image's default grid."""
    grid = _linspace32(1.0, 1.0 / steps, steps).astype(np.float64).astype(np.float32)
    shift = config.shift
    sigmas = (shift * grid / (1 + (shift - 1) * grid)).astype(np.float32)
    timesteps = (sigmas * np.float32(config.num_train_timesteps)).astype(np.float32)
    return np.concatenate([sigmas, np.zeros(1, np.float32)]), timesteps


def model_time(timestep: np.float32) -> np.float32:
    """What the DiT gets for a timestep: (1000 - t) / 1000 in float32 (0 is pure noise)."""
    return (np.float32(1000) - np.float32(timestep)) / np.float32(1000)
