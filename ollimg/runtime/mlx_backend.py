"""The MLX backend (Apple Silicon GPU, or CPU on Linux with `mlx[cpu]`): device and dtype choice,
lazy weight loading, and the Backend protocol of `ollimg/runtime/backend.py`.

Weights come from `mx.load` on each blob (or shard). MLX 0.32 does not memory-map the file: it
reads a tensor lazily, once, when the module first evaluates it, straight into the one buffer MLX
holds (unified memory on Apple Silicon), so there is no second full copy in host RAM.
float8 E4M3 weights arrive as uint8 with their float32 `_scale` and are dequantized once, when a
module is loaded (`load_module`). Also the building blocks every family's MLX files use:
`evaluate`, `set_weights`, `load_module`, `RMSNorm`.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from ollimg import config
from ollimg.blobs import FP8_SCALE_SUFFIX, TensorRef, read_header
from ollimg.errors import InvalidInput, InvalidModel, OutOfMemory

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

    def mean_abs(self, x: mx.array) -> float:
        return float(mx.mean(mx.abs(x.astype(mx.float32))))

    def synchronize(self) -> None:
        mx.synchronize()

    def fence(self, x: mx.array) -> "_Fence":
        mx.async_eval(x)  # start computing x now; the caller queues the next step meanwhile
        return _Fence(x)

    def memory(self) -> int:
        return self.weight_bytes

    def loaded(self) -> None:
        pass  # nothing kept: tensors are read on first evaluation

    def prepare(self) -> None:
        pass  # nothing slow to start: mx.compile works when first called

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



class _Fence:
    def __init__(self, x: mx.array):
        self.x = x

    def wait(self) -> None:
        mx.eval(self.x)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis (MLX's fused kernel: statistics in float32, as every reference)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.weight, self.eps)


def evaluate(*arrays) -> None:
    """mx.eval, with MLX's allocation failures (a RuntimeError naming malloc) raised as OutOfMemory."""
    try:
        mx.eval(*arrays)
    except RuntimeError as e:
        if "malloc" in str(e) or "allocate" in str(e):
            raise OutOfMemory(f"out of memory on MLX: {str(e).splitlines()[0]}; try a smaller size or fewer "
                              "images") from None
        raise


def set_weights(module: nn.Module, tensors: dict[str, mx.array], component: str, dtype: mx.Dtype) -> None:
    """Load `tensors` into `module` cast to `dtype`; every parameter must be given exactly once."""
    expected = dict(tree_flatten(module.parameters()))
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise InvalidModel(f"{component}: missing weight {missing[0]!r} ({len(missing)} missing in all)")
    if unexpected:
        raise InvalidModel(f"{component}: unexpected weight {unexpected[0]!r} ({len(unexpected)} in all)")
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise InvalidModel(
                f"{component}: weight {name!r} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected[name].shape)}"
            )
    cast = []
    for name, value in tensors.items():
        value = value if value.dtype == dtype else value.astype(dtype)
        evaluate(value)  # one tensor at a time: the stored and the converted copy never all coexist
        cast.append((name, value))
    module.load_weights(cast, strict=True)


def dequantize(tensors: dict[str, mx.array], dtype: mx.Dtype) -> dict[str, mx.array]:
    """float8 E4M3 weights (uint8) with a float32 per-output-channel `_scale` -> `dtype`."""
    out = {}
    for name, value in tensors.items():
        if name.endswith(FP8_SCALE_SUFFIX):
            continue
        scale = tensors.get(name + FP8_SCALE_SUFFIX)
        if scale is not None:
            value = (mx.from_fp8(value, dtype=mx.float32) * scale[:, None]).astype(dtype)
        out[name] = value
    return out


def load_module(backend: MlxBackend, module: nn.Module, refs: dict[str, TensorRef], where: str,
                layout=None) -> nn.Module:
    """`module` with the tensors of `refs` set (fp8 dequantized once, `layout(name, array)` applied)."""
    tensors = dequantize(backend.load_tensors(refs), backend.mx_dtype)
    if layout is not None:
        tensors = {k: layout(k, v) for k, v in tensors.items()}
    set_weights(module, tensors, where, backend.mx_dtype)
    backend.weight_bytes += sum(v.nbytes for _, v in tree_flatten(module.parameters()))
    return module
