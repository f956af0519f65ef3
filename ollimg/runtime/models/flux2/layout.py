"""FLUX.2 [klein] sequence layout in numpy: 4-axis position ids (T, H, W, L) for text, image and
reference tokens, RoPE tables, and reference images as the VAE takes them.

Shared by the torch and mlx backends; the same as diffusers' Flux2KleinPipeline helpers
(`_prepare_text_ids`, `_prepare_latent_ids`, `_prepare_image_ids`, Flux2ImageProcessor).
Imports no torch or mlx.

The transformer sees the sequence [text, image, references]; every image of a batch shares one
set of ids (diffusers takes the first row), text ids run over all padded positions.
"""

from __future__ import annotations

import math

import numpy as np

from ollimg.errors import InvalidInput

REFERENCE_SCALE = 10  # reference image i sits at time coordinate 10 + 10 i
REFERENCE_MIN_SIDE = 64
REFERENCE_MAX_ASPECT = 8
REFERENCE_MAX_AREA = 1024 * 1024


def text_ids(n: int) -> np.ndarray:
    """int64 [n, 4]: (0, 0, 0, l) for the text positions l = 0..n-1."""
    ids = np.zeros((n, 4), dtype=np.int64)
    ids[:, 3] = np.arange(n)
    return ids


def grid_ids(h: int, w: int, t: int = 0) -> np.ndarray:
    """int64 [h * w, 4]: (t, row, column, 0), row-major: the packed tokens of one latent grid."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ids = np.zeros((h * w, 4), dtype=np.int64)
    ids[:, 0] = t
    ids[:, 1] = rows.reshape(-1)
    ids[:, 2] = cols.reshape(-1)
    return ids


def reference_ids(sizes: list[tuple[int, int]]) -> np.ndarray:
    """int64 [sum(h * w), 4]: the packed grids of the reference images, image i at t = 10 + 10 i."""
    if not sizes:
        return np.zeros((0, 4), dtype=np.int64)
    return np.concatenate([grid_ids(h, w, REFERENCE_SCALE * (1 + i)) for i, (h, w) in enumerate(sizes)])


def rope(ids: np.ndarray, axes_dims: tuple[int, ...], theta: float) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) float32 [L, head_dim / 2], one angle per interleaved pair (x[2j], x[2j+1]).

    As diffusers' Flux2PosEmbed: freq_j = 1 / theta^(2j/d) per axis, angles and cos/sin in float64,
    then float32.
    """
    angles = []
    for axis, d in enumerate(axes_dims):
        freqs = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
        angles.append(np.outer(ids[:, axis].astype(np.float32).astype(np.float64), freqs))
    a = np.concatenate(angles, axis=1)
    return np.cos(a).astype(np.float32), np.sin(a).astype(np.float32)


def reference_pixels(image, multiple: int) -> np.ndarray:
    """float32 [3, h, w] in [-1, 1] from a PIL image, as Flux2KleinPipeline prepares a reference:
    shrunk (Lanczos) to at most 1024x1024 pixels of area, then center-cropped to multiples of
    `multiple` (16: the VAE's 8 times the 2x2 patch)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise InvalidInput(f"a reference image must be an image, got {type(image).__name__}")
    width, height = image.size
    if min(width, height) < REFERENCE_MIN_SIDE:
        raise InvalidInput(f"reference image {width}x{height} is too small: both sides must be at least "
                           f"{REFERENCE_MIN_SIDE} pixels")
    if max(width / height, height / width) > REFERENCE_MAX_ASPECT:
        raise InvalidInput(f"reference image {width}x{height} is too elongated: at most "
                           f"{REFERENCE_MAX_ASPECT}:1")
    image = within_area(image)
    width, height = image.size
    w, h = width // multiple * multiple, height // multiple * multiple
    left, top = (width - w) // 2, (height - h) // 2
    image = image.crop((left, top, left + w, top + h)).convert("RGB")
    pixels = np.asarray(image).astype(np.float32) / 255.0
    return (2.0 * pixels - 1.0).transpose(2, 0, 1).copy()


def within_area(image):
    """The PIL image shrunk (Lanczos) to at most 1024x1024 pixels of area, as diffusers' klein
    pipelines take input images; smaller ones unchanged."""
    from PIL import Image

    width, height = image.size
    if width * height <= REFERENCE_MAX_AREA:
        return image
    scale = math.sqrt(REFERENCE_MAX_AREA / (width * height))
    return image.resize((int(width * scale), int(height * scale)), Image.Resampling.LANCZOS)


def mask_cells(binary: np.ndarray, multiple: int) -> np.ndarray:
    """float32 [1, 1, H/multiple, W/multiple]: a 0/1 pixel mask per packed latent cell, as
    Flux2KleinInpaintPipeline's bilinear `interpolate` (align_corners False) takes it: at an even
    integer factor, the mean of the 2x2 pixels at each cell's centre (0, 1/4, 1/2, 3/4 or 1)."""
    c = multiple // 2
    rows = (binary[c - 1::multiple] + binary[c::multiple]) / 2
    return ((rows[:, c - 1::multiple] + rows[:, c::multiple]) / 2)[None, None].astype(np.float32)


def empirical_mu(image_seq_len: int, steps: int) -> float:
    """klein's time-shift `mu` for an image of `image_seq_len` packed tokens sampled in `steps`
    (diffusers' compute_empirical_mu: fitted at 10 and 200 steps, linear in the step count)."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if image_seq_len > 4300:
        return float(a2 * image_seq_len + b2)
    m_200 = a2 * image_seq_len + b2
    m_10 = a1 * image_seq_len + b1
    a = (m_200 - m_10) / 190.0
    b = m_200 - 200.0 * a
    return float(a * steps + b)
