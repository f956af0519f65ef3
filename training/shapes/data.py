"""Deterministic captioned images of the shapes world, rendered in batches with torch.

`batch(seed, step, n, device)` gives the same captions and pixels for the same arguments on
any device (up to antialiasing rounding). Rendering is vectorised so that a GPU trainer is not
starved: one pass per shape slot over a 2x supersampled grid.
"""

from __future__ import annotations

import math
import random

import torch

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


def _star_radius(theta: torch.Tensor, inner: float = 0.45) -> torch.Tensor:
    """Boundary radius of a 5-pointed star (outer radius 1) in direction theta from its up point."""
    a = torch.remainder(theta, 2 * math.pi / 5)
    phi = torch.minimum(a, 2 * math.pi / 5 - a)  # angle from the nearest point, 0..36 degrees
    p1 = (1.0, 0.0)
    p2 = (inner * math.cos(math.pi / 5), inner * math.sin(math.pi / 5))
    nx, ny = p2[1] - p1[1], -(p2[0] - p1[0])
    c = nx * p1[0] + ny * p1[1]
    return c / (nx * torch.cos(phi) + ny * torch.sin(phi))


def _masks(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(len(SHAPES), B, H, W) masks of each kind, in coordinates scaled by the half extent."""
    au, av = u.abs(), v.abs()
    circle = u * u + v * v <= 1.0
    square = torch.maximum(au, av) <= 0.85
    triangle = (v <= 0.8) & (v >= -1.0 + 1.85 * au)
    star = torch.sqrt(u * u + v * v) <= _star_radius(torch.atan2(u, -v))
    diamond = au + av <= 1.1
    by_kind = {"circle": circle, "square": square, "triangle": triangle, "star": star, "diamond": diamond}
    return torch.stack([by_kind[k] for k in SHAPES])


def render(specs: list[Spec], device: str = "cpu") -> torch.Tensor:
    """Images (B, 3, 128, 128) float32 in [-1, 1]."""
    b = len(specs)
    palette = torch.tensor(list(COLORS.values()), dtype=torch.float32, device=device) / 127.5 - 1.0
    names = list(COLORS)
    n = SIZE * SUPERSAMPLE
    coords = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    ys, xs = coords[:, None], coords[None, :]
    bg = torch.tensor([names.index(s.bg) for s in specs], device=device)
    img = palette[bg][:, :, None, None].expand(b, 3, n, n).clone()
    for slot in range(MAX_SHAPES):
        rows = [(i, s.shapes[slot]) for i, s in enumerate(specs) if len(s.shapes) > slot]
        if not rows:
            break
        idx = torch.tensor([i for i, _ in rows], device=device)
        sh = [s for _, s in rows]
        cx = torch.tensor([s.cx for s in sh], device=device)[:, None, None]
        cy = torch.tensor([s.cy for s in sh], device=device)[:, None, None]
        r = torch.tensor([SIZES[s.size] for s in sh], device=device)[:, None, None]
        kind = torch.tensor([SHAPES.index(s.kind) for s in sh], device=device)
        color = palette[torch.tensor([names.index(s.color) for s in sh], device=device)]
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
