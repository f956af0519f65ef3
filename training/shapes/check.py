"""Automatic checker: scores a generated image against its scene spec from pixel statistics.

numpy only. Each pixel is classified as the nearest named color; the pixels of one color split
into shapes (8-connected components with a solid core, so the one-pixel antialiasing fringe
between two other colors never counts as a shape). Five scores:
- background: the most common color of the 6-pixel border frame is the spec's background;
- color: among pixels not of the background color (inside the main shape's cell when the
  scene names several shapes' positions), the most common color is the main (first) shape's;
- position: every shape whose position the caption names has a shape of its color centred in
  its cell of the 3x3 grid (None for a count scene, whose caption names no position);
- kind: every such shape is of its kind; in a count scene, every shape of the named color is of
  the named kind. A shape's kind is the outline (outlines.py) that fits it best, by IoU over a
  small search of scale and offset around its bounding box, if that IoU reaches KIND_MIN_IOU;
- count: the image has as many shapes of the main shape's color as the spec has.
`stray_pixels` measures artefacts such as specks: pixels that are no mix of two spec colors;
`blemish_pixels` the fainter marks inside a shape, off its color but still such a mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from training.shapes import outlines
from training.shapes.world import COLORS, EXTENTS, POSITION_NAMES, SIZE, Spec, cell_center, is_count

BORDER = 6
MIN_PIXELS = 20  # fewer shape pixels than this (a small shape is ~380) counts as no shape
MIN_CORE = 8  # a shape has at least this many pixels whose 4 neighbours are of its color too
KIND_MIN_IOU = 0.7  # a fit worse than this is no kind (a blob); ideal renders fit at >= 0.8
STRAY_DISTANCE = 60.0  # RGB distance from every mix of two spec colors that makes a pixel stray
BLEMISH_DISTANCE = 25.0  # RGB distance from its shape's median color that makes a pixel inside it a blemish
BLEMISH_DEPTH = 3  # pixels in from a shape's outline where blemishes are looked for (edges blend)
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_NAMES = list(COLORS)
_SCALES = (0.9, 0.95, 1.0, 1.05, 1.1)
_OFFSETS = (-1.0, 0.0, 1.0)


@dataclass
class Blob:
    """One shape found in an image: its pixels and where it is."""
    mask: np.ndarray  # (H, W) bool
    cx: float
    cy: float

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class Score:
    background: bool
    color: bool
    position: bool | None  # None: the caption names no position (a count scene)
    kind: bool
    count: bool
    stray_pixels: int = 0
    blemish_pixels: int = 0


def classify(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) index of the nearest named color."""
    d = ((image[:, :, None, :].astype(np.float32) - _PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def _most_common(labels: np.ndarray) -> int:
    return int(np.bincount(labels.ravel(), minlength=len(_NAMES)).argmax())


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a bool mask (0 = not in mask), by min-label propagation."""
    big = mask.size + 1
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        h, w = mask.shape
        neighbours = [padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        new = np.where(mask, np.minimum.reduce(neighbours), big)
        if np.array_equal(new, labels):
            return np.where(mask, labels, 0)
        labels = new


def blobs(labels: np.ndarray, color: str) -> list[Blob]:
    """The shapes of one color, largest first."""
    mask = labels == _NAMES.index(color)
    core = _eroded(mask, 1, outside=True)  # a shape cut by the image's edge keeps its core there
    comp = _components(mask)
    found = []
    for label in np.unique(comp[comp > 0]):
        m = comp == label
        if m.sum() >= MIN_PIXELS and (core & m).sum() >= MIN_CORE:
            ys, xs = np.nonzero(m)
            found.append(Blob(m, float(xs.mean()) + 0.5, float(ys.mean()) + 0.5))
    return sorted(found, key=lambda b: -b.area)


def kind_fits(blob: Blob) -> dict[str, float]:
    """Best IoU of each outline with the blob, over scales and offsets around its bounding box."""
    ys, xs = np.nonzero(blob.mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    pad = 4
    ya, yb, xa, xb = max(y0 - pad, 0), y1 + pad, max(x0 - pad, 0), x1 + pad
    target = blob.mask[ya:yb, xa:xb]
    py, px = np.mgrid[ya:ya + target.shape[0], xa:xa + target.shape[1]] + 0.5  # pixel centres
    fits = {}
    for kind, (u0, u1, v0, v1) in EXTENTS.items():
        r0 = 0.5 * ((x1 - x0) / (u1 - u0) + (y1 - y0) / (v1 - v0))
        scale, dx, dy = (a.ravel()[:, None, None] for a in np.meshgrid(_SCALES, _OFFSETS, _OFFSETS))
        r = r0 * scale  # (N, 1, 1): every candidate scale and offset
        cx = (x0 + x1) / 2 - (u0 + u1) / 2 * r + dx
        cy = (y0 + y1) / 2 - (v0 + v1) / 2 * r + dy
        inside = outlines.inside(np, kind, (px - cx) / r, (py - cy) / r)  # (N, h, w)
        inter = (inside & target).sum((-2, -1))
        union = (inside | target).sum((-2, -1))
        fits[kind] = float((inter / union).max())
    return fits


def kind_of(blob: Blob) -> str | None:
    """The outline that fits the blob best, or None when none fits well (a blob)."""
    fits = kind_fits(blob)
    best = max(fits, key=fits.get)
    return best if fits[best] >= KIND_MIN_IOU else None


def _in_cell(blob: Blob, pos: str, size: int) -> bool:
    col = min(int(blob.cx * 3 / size), 2)
    row = min(int(blob.cy * 3 / size), 2)
    return POSITION_NAMES[row * 3 + col] == pos


def stray_pixels(image: np.ndarray, spec: Spec) -> int:
    """Pixels farther than STRAY_DISTANCE from every mix of two of the spec's colors (the
    antialiasing of an edge is such a mix; a multicolored speck is not)."""
    colors = [COLORS[c] for c in {spec.bg, *(s.color for s in spec.shapes)}]
    x = image.reshape(-1, 3).astype(np.float32)
    best = np.full(len(x), np.inf, dtype=np.float32)
    for a, b in combinations(colors, 2) if len(colors) > 1 else [(colors[0], colors[0])]:
        a, b = np.array(a, np.float32), np.array(b, np.float32)
        ab = b - a
        t = np.clip(((x - a) @ ab) / max(float(ab @ ab), 1e-6), 0, 1)
        best = np.minimum(best, np.linalg.norm(x - (a + t[:, None] * ab), axis=1))
    return int((best > STRAY_DISTANCE).sum())


def _filled(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes (pixels not in it that cannot reach the edge of its box) filled."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = np.pad(mask[y0:y1, x0:x1], 1)  # a free frame: everything outside the shape touches it
    outside = _components(~box)
    holes = (outside > 0) & (outside != outside[0, 0])
    filled = mask.copy()
    filled[y0:y1, x0:x1] |= holes[1:-1, 1:-1]
    return filled


def _eroded(mask: np.ndarray, times: int, outside: bool = False) -> np.ndarray:
    """4-neighbour erosion, `times` pixels deep; pixels past the image's edge count as `outside`."""
    for _ in range(times):
        p = np.pad(mask, 1, constant_values=outside)
        mask = mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask


def blemish_pixels(image: np.ndarray, shapes: list[Blob]) -> int:
    """Pixels at least BLEMISH_DEPTH inside one of the shapes (its holes filled) that are farther
    than BLEMISH_DISTANCE from the shape's own median color: the faint marks a decoder leaves
    inside shapes, which stray_pixels misses when they are a mix of two of the spec's colors.
    (The median, not the named color: a shape drawn a shade off is no blemish.)"""
    x = image.astype(np.float32)
    total = 0
    for blob in shapes:
        inner = x[_eroded(_filled(blob.mask), BLEMISH_DEPTH)]
        if len(inner):
            total += int((np.linalg.norm(inner - np.median(inner, axis=0), axis=1) > BLEMISH_DISTANCE).sum())
    return total


def score(image: np.ndarray, spec: Spec) -> Score:
    labels = classify(image)
    size = labels.shape[0]
    frame = np.ones(labels.shape, bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    bg_ok = _NAMES[_most_common(labels[frame])] == spec.bg
    main = spec.shapes[0]
    counted = is_count(spec)
    region = np.ones(labels.shape, bool)
    if len(spec.shapes) > 1 and not counted:  # only look around the main shape's cell
        cx, cy = cell_center(main.pos)
        half = size / 6 + 2  # the cell, and the 2 pixels a jittered large shape fills past it
        ys, xs = np.mgrid[:size, :size]
        region = (abs(xs - cx * size / SIZE) < half) & (abs(ys - cy * size / SIZE) < half)
    fg = region & (labels != _NAMES.index(spec.bg))
    color_ok = fg.sum() >= MIN_PIXELS and _NAMES[_most_common(labels[fg])] == main.color
    found = {c: blobs(labels, c) for c in {s.color for s in spec.shapes}}
    count_ok = len(found[main.color]) == sum(s.color == main.color for s in spec.shapes)
    if counted:
        position_ok = None
        kind_ok = bool(found[main.color]) and all(kind_of(b) == main.kind for b in found[main.color])
    else:
        placed = [next((b for b in found[s.color] if _in_cell(b, s.pos, size)), None) for s in spec.shapes]
        position_ok = all(b is not None for b in placed)
        kind_ok = position_ok and all(kind_of(b) == s.kind for b, s in zip(placed, spec.shapes))
    return Score(bool(bg_ok), bool(color_ok), position_ok, bool(kind_ok), bool(count_ok),
                 stray_pixels(image, spec), blemish_pixels(image, [b for f in found.values() for b in f]))


def summarize(scores: list[Score]) -> dict[str, float | None]:
    """The share of images right on each score (position over the scenes that name one)."""
    n = len(scores)
    placed = [s.position for s in scores if s.position is not None]
    return {
        "background": sum(s.background for s in scores) / n,
        "color": sum(s.color for s in scores) / n,
        "position": sum(placed) / len(placed) if placed else None,
        "kind": sum(s.kind for s in scores) / n,
        "count": sum(s.count for s in scores) / n,
    }


def figures(images: list[np.ndarray], specs: list[Spec]) -> dict:
    """The five scores of the held-out set (world.heldout_specs) over all its prompts and per
    group, and the images with stray pixels (specks) and with blemishes (fainter marks in shapes)."""
    scores = [score(im, s) for im, s in zip(images, specs)]
    groups = {"all": range(len(specs)), "singles": range(120), "counts": range(120, 140), "pairs": range(140, 160)}
    out = {name: summarize([scores[i] for i in idx]) for name, idx in groups.items()}
    out["images_with_stray_pixels"] = sum(s.stray_pixels > 0 for s in scores)
    out["stray_pixels_per_image"] = round(sum(s.stray_pixels for s in scores) / len(scores), 2)
    out["images_with_blemishes"] = sum(s.blemish_pixels > 0 for s in scores)
    out["blemish_pixels_per_image"] = round(sum(s.blemish_pixels for s in scores) / len(scores), 2)
    return out
