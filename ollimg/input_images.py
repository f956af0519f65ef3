"""Images a request starts from (edits): checked and normalised before any work starts.

`source()` turns uploaded bytes into an 8-bit RGB PNG, `mask()` into an 8-bit greyscale PNG
(white = redraw). What is refused (InvalidInput, HTTP 400): not an image, a truncated file, more
than MAX_PIXELS pixels or a side over MAX_SIDE (checked from the header, before decoding: a
decompression bomb never allocates), an animated image (several frames). What is converted, and
how: CMYK, palette, greyscale, 16-bit and alpha images become 8-bit RGB (16-bit scaled, alpha
dropped). An EXIF Orientation (a phone photo's) is applied to images and masks alike: they are
used upright, as browsers show them. A mask with an alpha channel follows OpenAI (alpha 0 = edit)
or, for A1111, its `create_binary_mask` (opaque = edit, when any pixel is not opaque); without
one, white = edit.
Knows no HTTP, torch or mlx: PIL only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io

from ollimg.errors import InvalidInput

MAX_SIDE = 8192
MAX_PIXELS = 40_000_000  # 40 megapixels: a large photo; decoded RGB is 120 MB


def _open(data: bytes, what: str):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidInput(f"{what} is not an image (PNG, JPEG or WebP expected)") from None
    except Image.DecompressionBombError as e:
        raise InvalidInput(f"{what} is too large (refused before decoding): {e}") from None
    w, h = image.size
    if w < 1 or h < 1 or max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:
        raise InvalidInput(f"{what} is {w}x{h} pixels: at most {MAX_SIDE} a side and {MAX_PIXELS // 1_000_000} "
                           "megapixels are accepted")
    if getattr(image, "n_frames", 1) > 1:
        raise InvalidInput(f"{what} is animated ({image.n_frames} frames): send a single still image")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidInput(f"{what} could not be decoded (truncated or corrupt): {e}") from None
    ImageOps.exif_transpose(image, in_place=True)  # upright, as displayed; the size checks hold either way
    return image


def _eight_bit(image):
    """16-bit and 32-bit single-channel modes scaled down to 8-bit L (PIL's convert would clip them)."""
    import numpy as np
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray((array / top * 255).round().clip(0, 255).astype(np.uint8), "L")
    return image


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def source(data: bytes, what: str = "image") -> bytes:
    """An 8-bit RGB PNG of an uploaded image."""
    image = _eight_bit(_open(data, what))
    if image.mode != "RGB":
        image = image.convert("RGBA").convert("RGB") if "A" in image.mode or image.mode == "P" else image.convert("RGB")
    return _png(image)


def mask(data: bytes, size: tuple[int, int] | None = None, what: str = "mask", transparent_edits: bool = True,
         blur: float = 0, invert: bool = False) -> bytes:
    """An 8-bit greyscale PNG (white = redraw) of an uploaded mask; `size`, when given, must be its
    size. `transparent_edits`: OpenAI's alpha (0 = edit), else A1111's (opaque = edit). `blur`: a
    Gaussian blur radius in pixels (A1111's mask_blur); `invert`: redraw where it would keep."""
    from PIL import ImageFilter, ImageOps

    image = _eight_bit(_open(data, what))
    if size is not None and image.size != tuple(size):
        raise InvalidInput(f"the {what} is {image.width}x{image.height} but the image is {size[0]}x{size[1]}: "
                           "use a mask of the image's size")
    alpha = None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
    if alpha is not None and transparent_edits:
        grey = ImageOps.invert(alpha)
    elif alpha is not None and alpha.getextrema() != (255, 255):
        grey = alpha
    else:
        grey = image.convert("L")
    if invert:
        grey = ImageOps.invert(grey)
    return _png(grey.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else grey)


def size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG made by `source`."""
    from PIL import Image

    return Image.open(io.BytesIO(data)).size


def from_base64(text: str, field: str) -> bytes:
    """Base64 (a `data:` URL prefix allowed) decoded, or InvalidInput naming the field."""
    try:
        return base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field} must be base64-encoded images") from None


def digest(data: bytes) -> str:
    """The `sha256:<hex>` of an input image's bytes (as uploaded), recorded in the output's metadata."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def prepare(images: list[bytes], mask_data: bytes | None, **mask_options) -> tuple[list[str], str | None, list[str]]:
    """(base64 RGB PNGs, base64 mask PNG or None, sha256 of each upload) for a GenerateRequest;
    the mask must have the first image's size (`mask_options`: those of `mask`)."""
    if mask_data is not None and not images:
        raise InvalidInput("a mask needs an image to edit")
    pngs = [source(data, "image" if len(images) == 1 else f"image {i + 1}") for i, data in enumerate(images)]
    mask_png = mask(mask_data, size(pngs[0]), **mask_options) if mask_data is not None else None
    b64 = [base64.b64encode(p).decode("ascii") for p in pngs]
    return b64, base64.b64encode(mask_png).decode("ascii") if mask_png else None, [digest(d) for d in images]
