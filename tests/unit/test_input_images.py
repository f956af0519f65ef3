"""Input images for edits: conversions and the two mask conventions (ollimg/input_images.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ollimg import input_images
from ollimg.errors import InvalidInput


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_source_converts_to_8_bit_rgb():
    grey16 = Image.fromarray(np.full((4, 6), 65535, np.uint16))
    out = decoded(input_images.source(encoded(grey16)))
    assert out.mode == "RGB" and out.size == (6, 4) and np.asarray(out).min() == 255  # scaled, not clipped
    cmyk = decoded(input_images.source(encoded(Image.new("CMYK", (5, 5), (0, 255, 255, 0)), "JPEG")))
    assert cmyk.mode == "RGB" and np.asarray(cmyk)[2, 2, 0] > 200 > np.asarray(cmyk)[2, 2, 1]
    rgba = decoded(input_images.source(encoded(Image.new("RGBA", (3, 3), (10, 20, 30, 0)))))
    assert rgba.mode == "RGB" and rgba.getpixel((1, 1)) == (10, 20, 30)


def test_mask_conventions():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:2, :, 3] = 0  # top half transparent
    data = encoded(Image.fromarray(rgba, "RGBA"))
    openai = np.asarray(decoded(input_images.mask(data)))
    a1111 = np.asarray(decoded(input_images.mask(data, transparent_edits=False)))
    assert openai[0, 0] == 255 and openai[3, 0] == 0  # OpenAI: transparent is edited
    assert a1111[0, 0] == 0 and a1111[3, 0] == 255  # A1111: opaque is edited
    grey = encoded(Image.fromarray(np.array([[0, 255]] * 2, np.uint8), "L"))
    assert np.asarray(decoded(input_images.mask(grey, invert=True))).tolist() == [[255, 0]] * 2
    opaque = encoded(Image.new("RGBA", (2, 2), (255, 255, 255, 255)))
    assert np.asarray(decoded(input_images.mask(opaque, transparent_edits=False))).min() == 255  # no alpha used


def test_mask_size_must_match():
    with pytest.raises(InvalidInput, match="the mask is 2x2 but the image is 3x3"):
        input_images.mask(encoded(Image.new("L", (2, 2))), (3, 3))


def test_base64():
    assert input_images.from_base64("data:image/png;base64,aGk=", "images") == b"hi"
    with pytest.raises(InvalidInput, match="images must be base64"):
        input_images.from_base64("not base64!", "images")
