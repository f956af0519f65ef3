"""The parallel PNG writer (ollimg/runtime/png.py): what Pillow reads back is what was written."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from ollimg.runtime import png


def read(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("shape", [(1, 1), (5, 17), (64, 48), (700, 500)])
@pytest.mark.parametrize("level", [None, 0, 1, 6])  # None: runs only (the default)
def test_pixels_round_trip(shape, level):
    rng = np.random.default_rng(shape[0])
    smooth = np.linspace(0, 255, shape[0] * shape[1] * 3).reshape(*shape, 3)
    rgb = (smooth + rng.integers(-20, 20, (*shape, 3))).clip(0, 255).astype(np.uint8)
    image = read(png.encode(rgb, level=level))
    assert image.mode == "RGB" and image.size == (shape[1], shape[0])
    assert (np.asarray(image) == rgb).all()


def test_large_images_are_deflated_in_parts_that_join_into_one_stream():
    rgb = np.random.default_rng(0).integers(0, 256, (700, 500, 3), dtype=np.uint8)
    raw = png.filtered(rgb)
    assert len(raw) // png.PART >= 2  # more than one part (when the machine has the threads)
    assert zlib.decompress(b"".join(png.deflate(raw, 1))) == raw
    assert zlib.decompress(b"".join(png.deflate(raw, None))) == raw


def test_text_chunks_are_read_as_pillow_writes_them():
    rgb = np.zeros((4, 4, 3), np.uint8)
    data = png.encode(rgb, [png.text_chunk("parameters", "a cat\nSteps: 8"), png.text_chunk("unicode", "ein Bär 🐻"),
                            png.itxt_chunk("XML:com.adobe.xmp", "<x/>")])
    info = read(data).info
    assert info["parameters"] == "a cat\nSteps: 8"
    assert info["unicode"] == "ein Bär 🐻"
    assert info["XML:com.adobe.xmp"] == "<x/>"


def test_bad_pixels_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        png.encode(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        png.encode(np.zeros((4, 4, 4), np.uint8))
