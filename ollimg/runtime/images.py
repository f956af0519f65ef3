"""Encoding generated images: PNG (default), JPEG or WebP, with generation metadata.

PNG carries the A1111 `parameters` text chunk (iTXt when not Latin-1) and an XMP packet (iTXt
`XML:com.adobe.xmp`) marking the image as IPTC DigitalSourceType trainedAlgorithmicMedia. JPEG
and WebP carry the same XMP and the parameters as EXIF UserComment (where A1111 puts them).
Imports no torch or mlx.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ollimg import __version__ as VERSION
from ollimg.errors import InvalidInput
from ollimg.runtime import png

FORMATS = ("png", "jpeg", "webp")
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/">
   <Iptc4xmpExt:DigitalSourceType>{source}</Iptc4xmpExt:DigitalSourceType>
   <xmp:CreatorTool>ollimg {version}</xmp:CreatorTool>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="r"?>"""
USER_COMMENT, EXIF_IFD = 0x9286, 0x8769


@dataclass(frozen=True)
class Parameters:
    """What made an image; `text()` is the A1111 infotext."""

    prompt: str
    negative_prompt: str | None
    steps: int
    guidance: float
    seed: int
    width: int
    height: int
    model: str
    model_digest: str | None = None
    strength: float | None = None  # an edit's: A1111's "Denoising strength"
    source_digests: tuple[str, ...] = ()  # sha256 of the images the edit started from
    teacache: float | None = None  # the TeaCache threshold, when caching was on
    steps_reused: int = 0  # steps whose block stack TeaCache reused

    def text(self) -> str:
        fields = {"Steps": self.steps, "Sampler": "Euler", "Schedule type": "Simple", "CFG scale": self.guidance,
                  "Seed": self.seed, "Size": f"{self.width}x{self.height}"}
        if self.strength is not None:
            fields["Denoising strength"] = self.strength
        if self.source_digests:
            fields["Source image hash"] = " ".join(d.split(":")[-1] for d in self.source_digests)
        if self.teacache is not None:
            fields["TeaCache"] = self.teacache
            fields["TeaCache steps"] = f"{self.steps - self.steps_reused} run, {self.steps_reused} reused"
        if self.model_digest:
            fields["Model hash"] = self.model_digest.split(":")[-1][:10]
        fields["Model"] = _model_field(self.model)
        fields["Version"] = f"ollimg {VERSION}"
        line = ", ".join(f"{k}: {_quote(str(v))}" for k, v in fields.items())
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        return "\n".join(lines + [line])


def _model_field(name: str) -> str:
    """The name as A1111 writes a checkpoint name: no `:` (infotext readers split `key: value` on it,
    even quoted), so `shapes:latest` is `shapes` and `model:tag` is `model-tag`."""
    name = name.removesuffix(":latest")
    return name.replace(":", "-")


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n\"") else value


def xmp() -> str:
    return XMP.format(source=DIGITAL_SOURCE_TYPE, version=VERSION)


def encode(image: Image.Image, params: Parameters | None, format: str = "png", compression: int | None = None) -> bytes:
    """Image bytes in `format`; `compression` 0-100 (JPEG/WebP: 100 - quality; PNG: zlib level)."""
    format = format.lower()
    if format == "jpg":
        format = "jpeg"
    if format not in FORMATS:
        raise InvalidInput(f"unsupported output format {format!r}: use png, jpeg or webp")
    if compression is not None and not (isinstance(compression, int) and 0 <= compression <= 100):
        raise InvalidInput(f"invalid compression {compression!r}: use 0 to 100")
    out = io.BytesIO()
    if format == "png":
        # By default deflate looks for runs only: faster than any level and, on photos, smaller (ollimg/runtime/png.py).
        level = None if compression is None else round(compression * 9 / 100)
        chunks = [png.text_chunk("parameters", params.text())] if params is not None else []
        chunks.append(png.itxt_chunk("XML:com.adobe.xmp", xmp()))
        return png.encode(np.asarray(image if image.mode == "RGB" else image.convert("RGB")), chunks, level)
    else:
        exif = _exif(b"UNICODE\0" + params.text().encode("utf-16-be")) if params is not None else b""
        quality = 90 if compression is None else max(1, 100 - compression)
        image.save(out, format.upper(), quality=quality, exif=exif, xmp=xmp().encode())
    return out.getvalue()


def _exif(user_comment: bytes) -> bytes:
    """An EXIF block holding one UserComment typed UNDEFINED (7), as the EXIF standard and A1111
    (piexif) write it; Pillow would type raw bytes BYTE (1), which readers such as sd-prompt-reader skip.
    Little-endian TIFF: IFD0 at 8 with the Exif IFD pointer, the Exif IFD at 26, the comment at 44."""
    ifd0 = struct.pack("<2sHI", b"II", 42, 8) + struct.pack("<HHHII", 1, EXIF_IFD, 4, 1, 26) + struct.pack("<I", 0)
    exif_ifd = struct.pack("<HHHII", 1, USER_COMMENT, 7, len(user_comment), 44) + struct.pack("<I", 0)
    return b"Exif\0\0" + ifd0 + exif_ifd + user_comment


def read_parameters(data: bytes) -> str | None:
    """The A1111 infotext of encoded image bytes (PNG chunk or EXIF UserComment), if any."""
    image = Image.open(io.BytesIO(data))
    if "parameters" in image.info:
        return image.info["parameters"]
    comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if isinstance(comment, bytes) and comment.startswith(b"UNICODE\0"):
        return comment[8:].decode("utf-16-be")
    return comment if isinstance(comment, str) else None
