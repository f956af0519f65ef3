"""Deterministic captioned images of the shapes world, rendered in batches with torch.

`batch(seed, step, n, device)` gives the same captions and pixels for the same arguments on
any device (up to antialiasing rounding). Rendering is vectorised so that a GPU trainer is not
starved: one pass per shape slot over a 2x supersampled grid.
"""

from __future__ import annotations

import random

import torch

from training.shapes import outlines
from training.shapes.world import COLORS, SHAPES, SIZE, SIZES, Spec, sample_spec

MAX_SHAPES = 3
SUPERSAMPLE = 2


def specs_for(seed: int, step: int, n: int, split: str = "train") -> list[Spec]:
    rng = random.Random(f"{seed}:{split}:{step}")
    return [sample_spec(rng, split) for _ in range(n)]


def batch(seed: int, step: int, n: int, device: str = "cpu") -> tuple[list[str], torch.Tensor]:
    """Captions and images (n, 3, 128, 128) in [-1, 1] for training step `step`."""
    specs = specs_for(seed, step, n)
    return [s.caption for s in specs], render(specs, device)


def on(device, values: list | torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`values` (a list, or a CPU tensor) on `device`. To a GPU through pinned memory without
    waiting: a plain `torch.tensor(values, device="cuda")` waits for all the GPU's queued work, so
    the CPU could never prepare the next training step while the GPU runs this one."""
    tensor = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _masks(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(len(SHAPES), B, H, W) masks of each kind, in coordinates scaled by the half extent."""
    return torch.stack([outlines.inside(torch, k, u, v) for k in SHAPES])


def render(specs: list[Spec], device: str = "cpu") -> torch.Tensor:
    """Images (B, 3, 128, 128) float32 in [-1, 1]."""
    b = len(specs)
    palette = on(device, list(COLORS.values()), torch.float32) / 127.5 - 1.0
    names = list(COLORS)
    n = SIZE * SUPERSAMPLE
    coords = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    ys, xs = coords[:, None], coords[None, :]
    bg = on(device, [names.index(s.bg) for s in specs])
    img = palette[bg][:, :, None, None].expand(b, 3, n, n).clone()
    for slot in range(MAX_SHAPES):
        rows = [(i, s.shapes[slot]) for i, s in enumerate(specs) if len(s.shapes) > slot]
        if not rows:
            break
        idx = on(device, [i for i, _ in rows])
        sh = [s for _, s in rows]
        cx = on(device, [s.cx for s in sh])[:, None, None]
        cy = on(device, [s.cy for s in sh])[:, None, None]
        r = on(device, [SIZES[s.size] for s in sh])[:, None, None]
        kind = on(device, [SHAPES.index(s.kind) for s in sh])
        color = palette[on(device, [names.index(s.color) for s in sh])]
        masks = _masks((xs - cx) / r, (ys - cy) / r)  # (K, m, n, n)
        mask = masks.permute(1, 0, 2, 3)[torch.arange(len(sh), device=device), kind]  # (m, n, n)
        sub = img[idx]
        sub = torch.where(mask[:, None], color[:, :, None, None], sub)
        img[idx] = sub
    return torch.nn.functional.avg_pool2d(img, SUPERSAMPLE)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, the pipeline's rounding."""
    x = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1)
