"""Reading a tensor's bytes from its source file in chunks of whole rows, as torch tensors.

Imports torch (allowed in quantize/ only).
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import torch

from ollimg.blobs import TensorRef
from ollimg.errors import InvalidModel

TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
CHUNK_BYTES = 8 * 1024 * 1024  # per worker thread; a few float32 temporaries of this size


def row_chunks(ref: TensorRef) -> Iterator[torch.Tensor]:
    """The tensor as 2-D chunks of whole rows (first dim), each at most about CHUNK_BYTES."""
    if ref.nbytes == 0:
        return
    rows = ref.shape[0] if ref.shape else 1
    row_elems = math.prod(ref.shape[1:])
    row_bytes = ref.nbytes // rows
    step = max(1, CHUNK_BYTES // row_bytes)
    with open(ref.path, "rb") as f:
        for start in range(0, rows, step):
            count = min(step, rows - start)
            want = count * row_bytes
            data = bytearray(want)
            got = os.preadv(f.fileno(), [data], ref.offset + start * row_bytes)
            if got != want:
                raise InvalidModel(f"{ref.path}: truncated while reading a tensor")
            yield torch.frombuffer(data, dtype=TORCH_DTYPES[ref.dtype]).view(count, row_elems)
