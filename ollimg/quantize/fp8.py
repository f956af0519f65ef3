"""`--quantize fp8`: linear-layer weights as float8 E4M3 with per-output-channel float32 scales.

The stored format (the runtime reads exactly this):
- a quantized weight `X.weight` (2-D, [out, in]) is stored as safetensors dtype `F8_E4M3`
  (torch.float8_e4m3fn: finite, max 448) with its original name and shape;
- next to it, `X.weight_scale`: dtype `F32`, shape [out];
- dequantized weight = `fp8.float() * scale[:, None]` (then cast to the compute dtype);
- scale[o] = max|W[o, :]| / 448 (1.0 for an all-zero row); fp8 = round-to-nearest-even of
  W / scale[:, None], computed in float32 from the source dtype;
- the config blob's `quantization` holds `scheme: "fp8_e4m3"`, the list of quantized weight
  names (`tensors`, path-style like `transformer/layers.0.attention.to_q.weight`) and the measured
  relative RMS error ||W - dequant(W)|| / ||W||, over all of them and per tensor.

Which tensors are quantized is the model family's FP8 set (`ollimg/runtime/models/<family>/
weights.py`, the one definition the loader reads too): per component, a pattern of the linear
weights (names as stored) that may be float8; of those, 2-D float tensors are quantized.
Everything else (biases, norms, embeddings, the VAE, the tokenizer, ...) is imported unchanged.

Quantization streams a tensor in chunks of whole rows, so memory stays far below its size.
Imports torch (allowed in quantize/ only).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch

from ollimg.blobs import FP8_DTYPE, FP8_SCALE_SUFFIX, BlobStore, BlobWriter, TensorRef, tensor_blob_header
from ollimg.errors import InvalidModel
from ollimg.quantize.source import row_chunks

SCHEME = "fp8_e4m3"
DTYPE = FP8_DTYPE
SCALE_DTYPE = "F32"
SCALE_SUFFIX = FP8_SCALE_SUFFIX
FP8_MAX = 448.0

FLOATS = {"F32", "F16", "BF16", "F64"}


def quantizes(title: str, ref: TensorRef, fp8: dict[str, re.Pattern]) -> bool:
    """Whether the tensor `component/name` becomes FP8 under the family's FP8 set `fp8`."""
    component, _, name = title.partition("/")
    pattern = fp8.get(component)
    return pattern is not None and bool(pattern.fullmatch(name)) and len(ref.shape) == 2 and ref.dtype in FLOATS


@dataclass(frozen=True)
class Quantized:
    weight: tuple[str, int, BlobWriter]  # (digest, size, pending writer) of the F8_E4M3 blob; land() it
    scale: tuple[str, int, BlobWriter]  # (digest, size, pending writer) of the F32 [out] scale blob
    error_sq: float  # sum of squared (dequantized - original)
    norm_sq: float  # sum of squared original

    @property
    def rel_rms_error(self) -> float:
        return math.sqrt(self.error_sq / self.norm_sq) if self.norm_sq > 0 else 0.0


def quantize_rows(x: torch.Tensor, amax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 x (out, in) -> (float8 E4M3 (out, in), float32 scale (out,)): each row scaled so that
    its absolute maximum (`amax`, computed if not given) lands on the format's largest value."""
    amax = x.abs().amax(dim=1) if amax is None else amax
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (x / scale[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def quantize_tensor(blobs: BlobStore, ref: TensorRef, on_bytes: Callable[[int], None] | None = None) -> Quantized:
    """Write `ref` as an F8_E4M3 blob plus its scale blob, and measure the error."""
    out = ref.shape[0]
    scales = torch.empty(out, dtype=torch.float32)
    error_sq = norm_sq = 0.0
    row = 0
    with blobs.writer() as w:
        w.write(tensor_blob_header(DTYPE, ref.shape))
        for chunk in row_chunks(ref):
            x = chunk.to(torch.float32)
            amax = x.abs().amax(dim=1)
            if not torch.isfinite(amax).all():
                raise InvalidModel(f"{ref.path}: a tensor to quantize holds inf or nan; import it without --quantize")
            q, scale = quantize_rows(x, amax)
            error_sq += float(q.to(torch.float32).mul_(scale[:, None]).sub_(x).square_().sum(dtype=torch.float64))
            norm_sq += float(torch.sum(x * x, dtype=torch.float64))
            w.write(q.view(torch.uint8).reshape(-1).numpy().data)
            scales[row : row + len(scale)] = scale
            row += len(scale)
            if on_bytes:
                on_bytes(chunk.numel() * chunk.element_size())
        weight = (w.commit(sync=False), w.size, w)
    with blobs.writer() as w:
        w.write(tensor_blob_header(SCALE_DTYPE, (out,)))
        w.write(scales.numpy().tobytes())
        scale_blob = (w.commit(sync=False), w.size, w)
    return Quantized(weight, scale_blob, error_sq, norm_sq)
