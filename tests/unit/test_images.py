import io

import numpy as np
import pytest
from PIL import Image

from ollimg.errors import InvalidInput
from ollimg.runtime.images import DIGITAL_SOURCE_TYPE, EXIF_IFD, USER_COMMENT, Parameters, encode, read_parameters

PARAMS = Parameters("a cat, on a mat: 東京", "blurry", 8, 0.0, 42, 64, 48, "z-image:turbo", "sha256:" + "ab" * 32)
IMAGE = Image.fromarray(np.arange(64 * 48 * 3, dtype=np.uint32).reshape(48, 64, 3).astype(np.uint8))


def test_png_has_a1111_parameters_and_xmp():
    data = encode(IMAGE, PARAMS)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (64, 48)
    text = image.info["parameters"]
    assert text.splitlines()[0] == "a cat, on a mat: 東京"
    assert text.splitlines()[1] == "Negative prompt: blurry"
    last = text.splitlines()[2]
    assert "Steps: 8" in last and "Seed: 42" in last and "Size: 64x48" in last and "CFG scale: 0.0" in last
    assert "Model: z-image-turbo," in last and "Model hash: abababab" in last
    assert DIGITAL_SOURCE_TYPE in image.info["XML:com.adobe.xmp"]
    assert np.array_equal(np.asarray(image), np.asarray(IMAGE))


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_jpeg_and_webp_carry_parameters_and_xmp(fmt):
    data = encode(IMAGE, PARAMS, fmt, compression=20)
    image = Image.open(io.BytesIO(data))
    assert image.format == fmt.upper()
    assert read_parameters(data) == PARAMS.text()
    assert DIGITAL_SOURCE_TYPE.encode() in data


def test_no_negative_prompt_line_when_empty():
    text = Parameters("p", None, 8, 0.0, 1, 16, 16, "m").text()
    assert len(text.splitlines()) == 2 and "Negative prompt" not in text


def test_bad_format_and_compression():
    with pytest.raises(InvalidInput, match="format"):
        encode(IMAGE, PARAMS, "gif")
    with pytest.raises(InvalidInput, match="compression"):
        encode(IMAGE, PARAMS, "png", compression=101)


def _exif_tag_type(data: bytes, tag: int) -> int:
    """The TIFF type of an Exif-IFD tag, read from the file's raw EXIF block (Pillow hides it)."""
    from PIL import TiffImagePlugin

    raw = Image.open(io.BytesIO(data)).info["exif"]
    tiff = raw[6:] if raw.startswith(b"Exif\0\0") else raw
    fp = io.BytesIO(tiff)
    ifd0 = TiffImagePlugin.ImageFileDirectory_v2(tiff[:8])
    fp.seek(ifd0.next)
    ifd0.load(fp)
    sub = TiffImagePlugin.ImageFileDirectory_v2(tiff[:8])
    fp.seek(ifd0[EXIF_IFD])
    sub.load(fp)
    return sub.tagtype[tag]


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_user_comment_is_typed_undefined(fmt):
    """EXIF says UserComment is UNDEFINED (7); sd-prompt-reader ignores it typed BYTE (1)."""
    assert _exif_tag_type(encode(IMAGE, PARAMS, fmt), USER_COMMENT) == 7


def test_model_name_in_the_infotext_has_no_colon():
    """Infotext readers (sd-parsers) split `key: value` on every colon, quoted or not."""
    assert "Model: shapes," in Parameters("x", None, 8, 0.0, 1, 16, 16, "shapes:latest").text()
    assert "Model: localhost-5000/team/z-image-fp8," in Parameters("x", None, 8, 0.0, 1, 16, 16,
                                                                    "localhost:5000/team/z-image:fp8").text()
