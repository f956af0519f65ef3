"""How the VAE walks a large image in strips (both backends walk alike).

Large images run layer by layer in lockstep: every strip of rows goes through one layer before any
goes through the next, so each GroupNorm takes its statistics over the whole image (summed strip
by strip) and each convolution reads one row of its neighbours' input on each side. The result is
the whole-image computation's, seamless by construction; only one strip's temporaries exist at a
time. The global self-attention runs at latent resolution, where the image is small, on all cells.
"""

from __future__ import annotations

STRIP_ELEMENTS = 1 << 25  # values per strip of an activation (channels x rows x width): 64 MiB in fp16


def strips(height: int, width: int, channels: int, elements: int = STRIP_ELEMENTS) -> list[tuple[int, int]]:
    """Row ranges [start, end) covering `height` rows, each at most `elements` values (at least one row)."""
    rows = max(1, elements // max(1, channels * width))
    return [(start, min(start + rows, height)) for start in range(0, height, rows)]


def halo(start: int, end: int, height: int, rows: int = 1) -> tuple[int, int]:
    """The rows a 3x3 convolution reads for output rows [start, end): `rows` more on each side, within the image."""
    return max(start - rows, 0), min(end + rows, height)
