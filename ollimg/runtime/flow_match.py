"""Flow matching: FlowMatchEulerDiscreteScheduler's sigma schedules, as the pipelines set them.

A static shift, or a time shift by `mu` (exponential or linear; a family may compute its `mu`
from the image size); the default grid, or sigmas a pipeline passes. float32 numpy arithmetic
in the same order as diffusers, so sigmas and timesteps match bit for bit or within one ulp.
Knows no model family; imports no torch or mlx.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ollimg.errors import InvalidModel


@dataclass(frozen=True)
class FlowMatchConfig:
    """`scheduler/scheduler_config.json`; absent keys take the class defaults (the real files hold few)."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"
    shift_terminal: float | None = None
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    invert_sigmas: bool = False

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "scheduler/scheduler_config.json") -> "FlowMatchConfig":
        if raw.get("_class_name", "FlowMatchEulerDiscreteScheduler") != "FlowMatchEulerDiscreteScheduler":
            raise InvalidModel(f"{where}: scheduler {raw.get('_class_name')!r} is not supported "
                               "(ollimg runs FlowMatchEulerDiscreteScheduler)")
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in raw.items() if k in names})
        unsupported = [k for k in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                                   "invert_sigmas") if getattr(config, k)]
        if config.time_shift_type not in ("exponential", "linear"):
            unsupported.append(f"time_shift_type {config.time_shift_type!r}")
        if unsupported:
            raise InvalidModel(f"{where}: {', '.join(unsupported)} is not supported")
        return config


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


def schedule(steps: int, config: FlowMatchConfig, sigmas: np.ndarray | None = None,
             mu: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas float32 [steps + 1] ending in 0, timesteps float32 [steps]).

    `sigmas`: the pipeline's own grid (float64 or float32, as it passes them), else the scheduler's
    default grid; `mu`: the time shift, required when the config shifts dynamically."""
    if sigmas is None:
        grid = _linspace32(1.0, 1.0 / steps, steps).astype(np.float64).astype(np.float32)
    else:
        grid = np.asarray(sigmas).astype(np.float32)
    if config.use_dynamic_shifting:
        if mu is None:
            raise ValueError("a dynamically shifted schedule needs mu")
        if config.time_shift_type == "exponential":
            shifted = math.exp(mu) / (math.exp(mu) + (1 / grid - 1) ** 1.0)
        else:
            shifted = mu / (mu + (1 / grid - 1) ** 1.0)
    else:
        shift = config.shift
        shifted = shift * grid / (1 + (shift - 1) * grid)
    shifted = np.asarray(shifted, dtype=np.float32)
    timesteps = (shifted * np.float32(config.num_train_timesteps)).astype(np.float32)
    return np.concatenate([shifted, np.zeros(1, np.float32)]), timesteps
