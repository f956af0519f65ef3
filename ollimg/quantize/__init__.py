"""Weight conversion while importing: dtype casts (`cast.py`) and FP8 quantization (`fp8.py`).

The only package besides `runtime/` that may import torch. Both stream a tensor in chunks from
its source file into a `BlobWriter`, so memory stays far below the size of the tensor.
"""
