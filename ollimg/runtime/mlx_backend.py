"""The MLX backend (Apple Silicon GPU, or CPU on Linux with `mlx[cpu]`): device and dtype choice,
lazy weight loading, and the Backend protocol of `ollimg/runtime/backend.py`.

Weights come from `mx.load` on each blob (or shard). MLX 0.32 does not memory-map the file: it
reads a tensor lazily, once, when the module first evaluates it, straight into the one buffer MLX
holds (unified memory on Apple Silicon), so there is no second full copy in host RAM.
float8 E4M3 weights arrive as uint8 with their float32 `_scale` and are dequantized by the
component builder (`models/zimage/mlx`).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import mlx.core as mx
import numpy as np

from ollimg import config
from ollimg.blobs import TensorRef, read_header
from ollimg.errors import InvalidInput, InvalidModel

log = logging.getLogger(__name__)

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
STORED = {"F32": mx.float32, "BF16": mx.bfloat16, "F16": mx.float16, "F8_E4M3": mx.uint8}


class MlxBackend:
    name = "mlx"
    processor = "MLX"

    def __init__(self, device: str | None = None, dtype: str | None = None):
        wanted = (device or config.device() or "auto").lower()
        has_gpu = mx.metal.is_available()
        if wanted == "auto":
            wanted = "gpu" if has_gpu else "cpu"
        if wanted not in ("cpu", "gpu"):
            raise InvalidInput(f"unknown mlx device {wanted!r}: use cpu or gpu")
        if wanted == "gpu" and not has_gpu:
            raise InvalidInput("device gpu asked for, but MLX sees no Metal GPU; use device cpu")
        self.device = mx.gpu if wanted == "gpu" else mx.cpu
        mx.set_default_device(self.device)  # the runtime process serves one model on one device
        self.dtype = dtype or ("bfloat16" if wanted == "gpu" else "float32")
        if self.dtype not in DTYPES:
            raise InvalidInput(f"unsupported dtype {self.dtype!r}: use float32, bfloat16 or float16")
        self.mx_dtype = DTYPES[self.dtype]
        # mx.compile of the denoising step: on the CPU it measured no faster (bench/README.md: the
        # matmuls dominate) and its first trace JIT-compiles C++ for seconds; on the GPU it fuses
        # the elementwise work (RoPE, norms, gates) into fewer kernels.
        self.compile = wanted == "gpu"
        self.weight_bytes = 0  # of the built modules' parameters, added by the component builder

    # --- the Backend protocol ---
    def from_numpy(self, array: np.ndarray) -> mx.array:
        return mx.array(np.ascontiguousarray(array))

    def to_numpy(self, x: mx.array) -> np.ndarray:
        return np.array(x.astype(mx.float32))

    def concat(self, xs: list[mx.array]) -> mx.array:
        return mx.concatenate(xs, axis=0)

    def norm(self, x: mx.array) -> float:
        return float(mx.sqrt(mx.sum(mx.square(x.astype(mx.float32)))))

    def synchronize(self) -> None:
        mx.synchronize()

    def memory(self) -> int:
        return self.weight_bytes

    def load_tensors(self, refs: dict[str, TensorRef], dtype: mx.Dtype | None = None) -> dict[str, mx.array]:
        """Tensors read on first evaluation; floats in `dtype` (default: the compute dtype), fp8
        (as uint8) and fp8 scales as stored."""
        dtype = dtype or self.mx_dtype
        # file -> byte offset -> names: equal tensors share one blob in the store (deduplicated)
        by_file: dict = defaultdict(lambda: defaultdict(list))
        for name, ref in refs.items():
            if ref.dtype not in STORED:
                raise InvalidModel(f"{ref.path}: tensor dtype {ref.dtype} is not supported")
            by_file[ref.path][ref.offset].append(name)
        out = {}
        for path, offsets in by_file.items():
            stored = mx.load(str(path), format="safetensors")
            for inner, ref in read_header(path)[0].items():
                for name in offsets.get(ref.offset, []):
                    tensor = stored[inner]
                    if ref.dtype != "F8_E4M3" and not name.endswith("_scale") and tensor.dtype != dtype:
                        tensor = tensor.astype(dtype)
                    out[name] = tensor
        return out

    def build(self, config, source):
        from ollimg.runtime.models.zimage.mlx import build

        return build(self, config, source)
