"""Automatic checker: scores a generated image against its scene spec from pixel statistics.

numpy only. Each pixel is classified as the nearest named color. Scores for the spec's main
(first) shape:
- background: the most common color of the 6-pixel border frame is the spec's background;
- color: among pixels not of the background color (inside the main shape's cell when the scene
  has several shapes), the most common color is the main shape's;
- position: the centroid of the main shape's color pixels lies in the named cell of a 3x3 grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.shapes.world import COLORS, POSITION_NAMES, SIZE, Spec, cell_center

BORDER = 6
MIN_PIXELS = 20  # fewer shape pixels than this (a small shape is ~380) counts as no shape
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_NAMES = list(COLORS)


@dataclass
class Score:
    background: bool
    color: bool
    position: bool


def classify(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) index of the nearest named color."""
    d = ((image[:, :, None, :].astype(np.float32) - _PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def _most_common(labels: np.ndarray) -> int:
    return int(np.bincount(labels.ravel(), minlength=len(_NAMES)).argmax())


def score(image: np.ndarray, spec: Spec) -> Score:
    labels = classify(image)
    frame = np.ones(labels.shape, bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    bg_ok = _NAMES[_most_common(labels[frame])] == spec.bg
    main = spec.shapes[0]
    region = np.ones(labels.shape, bool)
    if len(spec.shapes) > 1:  # only look around the main shape's cell
        cx, cy = cell_center(main.pos)
        half = SIZE / 3
        ys, xs = np.mgrid[: labels.shape[0], : labels.shape[1]]
        region = (abs(xs - cx) < half) & (abs(ys - cy) < half)
    fg = region & (labels != _NAMES.index(spec.bg))
    color_ok = fg.sum() >= MIN_PIXELS and _NAMES[_most_common(labels[fg])] == main.color
    ys, xs = np.nonzero(labels == _NAMES.index(main.color))
    pos_ok = False
    if len(xs) >= MIN_PIXELS:
        col = min(int(xs.mean() * 3 / labels.shape[1]), 2)
        row = min(int(ys.mean() * 3 / labels.shape[0]), 2)
        pos_ok = POSITION_NAMES[row * 3 + col] == main.pos
    return Score(bool(bg_ok), bool(color_ok), bool(pos_ok))


def summarize(scores: list[Score]) -> dict[str, float]:
    n = len(scores)
    return {
        "background": sum(s.background for s in scores) / n,
        "color": sum(s.color for s in scores) / n,
        "position": sum(s.position for s in scores) / n,
    }
