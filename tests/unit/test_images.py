import io

import numpy as np
import pytest
from PIL import Image

from ollimg.errors import InvalidInput
from ollimg.runtime.images import DIGITAL_SOURCE_TYPE, Parameters, encode, read_parameters

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
    assert 'Model: "z-image:turbo"' in last and "Model hash: abababab" in last
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
