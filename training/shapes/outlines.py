"""The five outlines as inside-tests, written once for any array module (numpy or torch).

`data.py` renders training images with them (torch); `check.py` fits them to generated shapes
(numpy). Coordinates are scaled by the shape's half extent: (u, v) = ((x - cx) / r, (y - cy) / r),
v pointing down.
"""

from __future__ import annotations

import math

from training.shapes.world import SHAPES

STAR_INNER = 0.45  # inner radius of the star's notches (outer radius 1)


def _star_radius(xp, theta):
    """Boundary radius of a 5-pointed star (outer radius 1) in direction theta from its up point."""
    a = xp.remainder(theta, 2 * math.pi / 5)
    phi = xp.minimum(a, 2 * math.pi / 5 - a)  # angle from the nearest point, 0..36 degrees
    p1 = (1.0, 0.0)
    p2 = (STAR_INNER * math.cos(math.pi / 5), STAR_INNER * math.sin(math.pi / 5))
    nx, ny = p2[1] - p1[1], -(p2[0] - p1[0])
    c = nx * p1[0] + ny * p1[1]
    return c / (nx * xp.cos(phi) + ny * xp.sin(phi))


def inside(xp, kind: str, u, v):
    """Boolean array: which (u, v) lie inside the outline of `kind`. xp is numpy or torch."""
    au, av = xp.abs(u), xp.abs(v)
    if kind == "circle":
        return u * u + v * v <= 1.0
    if kind == "square":
        return xp.maximum(au, av) <= 0.85
    if kind == "triangle":
        return (v <= 0.8) & (v >= -1.0 + 1.85 * au)
    if kind == "star":
        return xp.sqrt(u * u + v * v) <= _star_radius(xp, xp.arctan2(u, -v))
    if kind == "diamond":
        return au + av <= 1.1
    raise ValueError(f"unknown shape kind {kind!r}; known: {', '.join(SHAPES)}")
