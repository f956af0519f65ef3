"""Admission: what a generation may ask for, decided before any work, for every interface.

The scheduler calls `plan` and `check_memory` at the top of every generation and load, so the
native, OpenAI and A1111 routes (and anything added later) pass the same check. `plan` fills the
model's defaults in and enforces the configured limits (OLLIMG_MAX_PIXELS, OLLIMG_MAX_IMAGES,
OLLIMG_MAX_STEPS: 400 `over_limit`). `check_memory` compares the request's estimated peak memory
(memory.estimate: the weights unless they are loaded already, activations for its size and batch,
the VAE decode) with what the device has free plus what unloading idle models would release
(measured, the figures `ps` shows), and refuses what cannot fit with 507 `insufficient_memory`,
saying what would. Imports config, errors and memory; no HTTP, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ollimg import config
from ollimg.errors import InsufficientMemory, OverLimit
from ollimg.server import memory

FALLBACK_SIZE, FALLBACK_STEPS = 1024, 8  # when a model's config names no defaults


@dataclass(frozen=True)
class Limits:
    pixels: int
    images: int
    steps: int
    seconds: float | None  # a generation's time limit; None: none

    @classmethod
    def from_config(cls) -> "Limits":
        return cls(config.max_pixels(), config.max_images(), config.max_steps(), config.max_generation_time())


@dataclass(frozen=True)
class Plan:
    """A request's size with the model's defaults filled in: what its memory and time depend on."""

    width: int
    height: int
    steps: int
    n: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def plan(defaults: dict, width: int | None, height: int | None, steps: int | None, n: int, limits: Limits) -> Plan:
    """The request's Plan; OverLimit when it asks for more than the limits allow."""
    p = Plan(width or _int(defaults.get("width"), FALLBACK_SIZE), height or _int(defaults.get("height"), FALLBACK_SIZE),
             steps or _int(defaults.get("steps"), FALLBACK_STEPS), n)
    if p.pixels > limits.pixels:
        side = math.isqrt(limits.pixels) // 16 * 16
        raise OverLimit(f"{p.width}x{p.height} is {p.pixels} pixels; this server allows at most {limits.pixels} "
                        f"per image (e.g. {side}x{side}; OLLIMG_MAX_PIXELS)")
    if p.n > limits.images:
        raise OverLimit(f"{p.n} images asked for; this server makes at most {limits.images} per request (OLLIMG_MAX_IMAGES)")
    if p.steps > limits.steps:
        raise OverLimit(f"{p.steps} steps asked for; this server runs at most {limits.steps} (OLLIMG_MAX_STEPS)")
    return p


def check_memory(label: str, weights: int, p: Plan, room: int | None, device: Callable[[], str]) -> int:
    """The bytes `p` needs beyond what is loaded (`weights`: 0 when the model is loaded already);
    InsufficientMemory when more than `room` (None: unknown, admitted)."""
    need = memory.estimate(weights, p.width, p.height, p.n)
    if room is None or need <= room:
        return need
    raise InsufficientMemory(
        f"{label} at {p.width}x{p.height} x{p.n} needs about {need / 1e9:.1f} GB of {device()}, and only about "
        f"{max(room, 0) / 1e9:.1f} GB can be made free; {_what_fits(weights, p, room)}"
    )


def _what_fits(weights: int, p: Plan, room: int) -> str:
    budget = room - memory.estimate(weights, 0, 0, 0)
    if budget <= 0:
        return (f"the model alone needs about {memory.estimate(weights, 0, 0, 0) / 1e9:.1f} GB: stop other programs "
                "or use a smaller (fp8) version of it")
    images = budget // (p.pixels * memory.BYTES_PER_PIXEL)
    side = math.isqrt(budget // memory.BYTES_PER_PIXEL) // 16 * 16
    if images >= 1:
        return f"up to {images} image{'s' if images > 1 else ''} at {p.width}x{p.height} would fit (or one of {side}x{side})"
    if side >= 64:
        return f"one image of up to {side}x{side} would fit"
    return "not even a small image fits now: stop other programs or models and retry"


def _int(value, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default
