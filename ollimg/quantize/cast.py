"""`--dtype`: float tensors converted while importing (F32/F16/F64 -> BF16), chunk by chunk.

Imports torch (allowed in quantize/ only).
"""

from __future__ import annotations

from typing import Callable

import torch

from ollimg.blobs import BlobStore, BlobWriter, TensorRef, tensor_blob_header
from ollimg.blobs.tensorfile import FLOAT_DTYPES
from ollimg.quantize.source import TORCH_DTYPES, row_chunks

DTYPES = {"bf16": "BF16"}  # --dtype value -> safetensors dtype


def converts(ref: TensorRef, dtype: str) -> bool:
    """Whether `--dtype` changes this tensor: a float tensor of another float dtype."""
    return ref.dtype in FLOAT_DTYPES and ref.dtype != dtype


def cast_tensor(
    blobs: BlobStore, ref: TensorRef, dtype: str, on_bytes: Callable[[int], None] | None = None
) -> tuple[str, int, BlobWriter]:
    """Write `ref` converted to `dtype` as a tensor blob: (digest, size, pending writer; land() it)."""
    target = TORCH_DTYPES[dtype]
    with blobs.writer() as w:
        w.write(tensor_blob_header(dtype, ref.shape))
        for chunk in row_chunks(ref):
            w.write(chunk.to(target).contiguous().view(torch.uint8).reshape(-1).numpy().data)
            if on_bytes:
                on_bytes(chunk.numel() * chunk.element_size())
        return w.commit(sync=False), w.size, w
