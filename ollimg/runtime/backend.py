"""The backend protocol: what the shared runtime and the families ask of torch or mlx, and picking one.

The shared code (flow-matching schedules, noise, the Euler loop) works on numpy and on opaque
backend arrays with only arithmetic operators (`+ - * /`, unary `-`, slicing `x[a:b]`) and the
protocol below. A backend builds arrays and runs ops; it never imports a model family: a family's
`torch/` or `mlx/` files build their modules with the backend's building blocks
(`torch_backend.load_module`, `mlx_backend.load_module`). Imports no torch or mlx at import time.
"""

from __future__ import annotations

import platform
from typing import Any, Protocol

import numpy as np

from ollimg import config
from ollimg.blobs import TensorRef
from ollimg.errors import InvalidInput

Array = Any  # a torch.Tensor or an mx.array


class Backend(Protocol):
    name: str  # "torch" or "mlx"
    processor: str  # "CPU", "CUDA" or "MLX" (shown by `ollimg ps`)
    dtype: str  # compute dtype of the weights: "float32", "bfloat16", ...

    def from_numpy(self, array: np.ndarray) -> Array:
        """On the device; float32 stays float32."""

    def to_numpy(self, x: Array) -> np.ndarray:
        """A float32 copy on the host."""

    def concat(self, xs: list[Array]) -> Array:
        """Along axis 0."""

    def norm(self, x: Array) -> float:
        """The L2 norm of the whole array."""

    def mean_abs(self, x: Array) -> float:
        """The mean absolute value of the whole array, in float32 (TeaCache's L1 distances)."""

    def synchronize(self) -> None:
        """Wait for queued device work (timings, progress)."""

    def fence(self, x: Array) -> Any:
        """A marker after the work queued so far (that computes `x`): `.wait()` blocks until it is done."""

    def memory(self) -> int:
        """Bytes the loaded weights hold."""

    def load_tensors(self, refs: dict[str, TensorRef]) -> dict[str, Array]:
        """Memory-mapped; BF16/F16/F32 converted to `dtype`; F8_E4M3 kept with its `_scale`."""

    def loaded(self) -> None:
        """Loading is over (done or failed): give back what it kept for itself (pinned staging memory)."""

    def prepare(self) -> None:
        """Before a model is asked for: start what later generations need (torch's compiler imports, on a thread)."""


def choose(backend: str | None = None) -> str:
    """"torch" or "mlx": the argument, else OLLIMG_BACKEND, else MLX on Apple Silicon, else torch."""
    name = (backend or config.backend()).lower()
    if name == "auto":
        name = "mlx" if platform.system() == "Darwin" and platform.machine() == "arm64" else "torch"
    if name not in ("torch", "mlx"):
        raise InvalidInput(f"unknown backend {name!r}: use torch or mlx")
    return name


def create(name: str, device: str | None = None, dtype: str | None = None):
    """An instance of backend `name` on `device` ("cpu", "cuda", "cuda:N"; None = best) with compute `dtype`."""
    if name == "torch":
        from ollimg.runtime.torch_backend import TorchBackend

        return TorchBackend(device=device, dtype=dtype)
    if name == "mlx":
        from ollimg.runtime import mlx_blas

        mlx_blas.load()  # before the first import of mlx: its Linux wheel's own BLAS is slow
        try:
            import mlx.core  # noqa: F401
        except ImportError:
            raise InvalidInput("the mlx backend needs mlx: pip install mlx (macOS on Apple Silicon) or "
                               "'mlx[cpu]' (Linux); or use backend torch (OLLIMG_BACKEND=torch)") from None
        from ollimg.runtime.mlx_backend import MlxBackend

        return MlxBackend(device=device, dtype=dtype)
    raise InvalidInput(f"unknown backend {name!r}: use torch or mlx")
