"""The safetensors layout: reading headers of any safetensors file, writing one-tensor blobs.

A tensor blob is a minimal safetensors file holding one tensor named `data`: an 8-byte
little-endian header length, a JSON header padded with spaces to a multiple of 8, then the raw
bytes. The name lives in the manifest, not the blob, so equal tensors dedupe across models.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from ollimg.errors import InvalidModel

DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# A float8 weight: `X.weight` of dtype F8_E4M3 comes with `X.weight_scale`, F32 [out_features].
FP8_DTYPE = "F8_E4M3"
FP8_SCALE_SUFFIX = "_scale"
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor's raw bytes lie: a file, a byte offset and a length, with dtype and shape."""

    path: Path
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


def tensor_blob_header(dtype: str, shape: tuple[int, ...] | list[int]) -> bytes:
    """The header bytes (length prefix included) of a one-tensor blob named `data`."""
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    header = json.dumps(
        {"data": {"dtype": dtype, "shape": list(shape), "data_offsets": [0, nbytes]}}, separators=(",", ":")
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


def read_header(path: Path) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """Tensors and `__metadata__` of a safetensors file; a corrupt or truncated file is InvalidModel."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise InvalidModel(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", raw)
            if length > MAX_HEADER or 8 + length > size:
                raise InvalidModel(f"{path}: corrupt safetensors header (length {length} in a {size}-byte file)")
            header = json.loads(f.read(length))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidModel(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise InvalidModel(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    start = 8 + length
    tensors = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise InvalidModel(f"{path}: corrupt safetensors header entry for {name!r}") from None
        if dtype not in DTYPE_SIZES:
            raise InvalidModel(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != expected or begin < 0:
            raise InvalidModel(f"{path}: tensor {name!r} claims {end - begin} bytes, its shape needs {expected}")
        if start + end > size:
            raise InvalidModel(f"{path}: truncated: tensor {name!r} ends at byte {start + end}, the file has {size}")
        tensors[name] = TensorRef(path, start + begin, expected, dtype, shape)
    return tensors, metadata
