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


def oriented(image: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    """`image` stored turned as a camera stores it, with the EXIF Orientation that rights it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def upright() -> Image.Image:
    """60x40, red on the left half, blue on the right: which way it was turned shows."""
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (255, 0, 0)
    rgb[:, 30:] = (0, 0, 255)
    return Image.fromarray(rgb, "RGB")


@pytest.mark.parametrize("orientation, stored", [
    (6, lambda im: im.transpose(Image.Transpose.ROTATE_90)),  # a phone held upright: stored turned left
    (8, lambda im: im.transpose(Image.Transpose.ROTATE_270)),
    (3, lambda im: im.transpose(Image.Transpose.ROTATE_180)),
    (2, lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied_to_images_and_masks(orientation, stored, fmt):
    data = oriented(stored(upright()), orientation, fmt)
    assert Image.open(io.BytesIO(data)).size == ((40, 60) if orientation in (6, 8) else (60, 40))  # as stored
    image = decoded(input_images.source(data))
    assert image.size == (60, 40) and "exif" not in image.info
    pixels = np.asarray(image).astype(int)
    assert pixels[20, 5, 0] > 200 > pixels[20, 5, 2] and pixels[20, 55, 2] > 200 > pixels[20, 55, 0]
    mask = decoded(input_images.mask(oriented(stored(upright().convert("L")), orientation, fmt), (60, 40)))
    assert mask.size == (60, 40) and np.asarray(mask)[20, 5] > np.asarray(mask)[20, 55]  # red is the lighter grey
