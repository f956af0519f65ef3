"""Content-addressed blobs: `blobs/sha256-<hex>` files and the safetensors tensor format.

Must not import httpx, fastapi, rich, torch or mlx.
"""

from ollimg.blobs.store import BlobStore, BlobWriter
from ollimg.blobs.tensorfile import DTYPE_SIZES, FP8_DTYPE, FP8_SCALE_SUFFIX, TensorRef, read_header, tensor_blob_header

__all__ = ["BlobStore", "BlobWriter", "DTYPE_SIZES", "FP8_DTYPE", "FP8_SCALE_SUFFIX", "TensorRef", "read_header", "tensor_blob_header"]
