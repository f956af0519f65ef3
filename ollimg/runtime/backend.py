"""The backend protocol: what the shared pipeline asks of torch or mlx, and picking one.

The shared code (tokenizer, scheduler, noise, position ids, the denoise loop with CFG) works on
numpy and on opaque backend arrays with only arithmetic operators (`+ - * /`, unary `-`,
slicing `x[a:b]`). Everything else a backend provides:

    class Backend(Protocol):
        name: str          # "torch" or "mlx"
        processor: str     # "CPU", "CUDA" or "MLX" (shown by `ollimg ps`)
        dtype: str         # compute dtype of the weights: "float32", "bfloat16", ...

        def from_numpy(self, array: np.ndarray) -> Array          # float32 stays float32, on the device
        def to_numpy(self, x: Array) -> np.ndarray                # float32 copy on the host
        def concat(self, xs: list[Array]) -> Array                # along axis 0
        def norm(self, x: Array) -> float                         # L2 norm of the whole array
        def synchronize(self) -> None                             # wait for queued device work (timings)
        def memory(self) -> int                                   # bytes the loaded weights hold
        def load_tensors(self, refs: dict[str, TensorRef]) -> dict[str, Array]
            # memory-mapped; BF16/F16/F32 converted to `dtype`; F8_E4M3 kept with its `_scale`
        def build(self, config: ZImageConfig, source: ModelSource) -> Components

    Components (what `build` returns; see `Components` below):
        encode(ids: list[np.ndarray]) -> list[Array]
            token ids of each prompt (unpadded, int64) -> caption features [L_i, hidden] in the
            compute dtype: the hidden state before the last Qwen3 layer.
        transformer(x: Array, t: np.ndarray, caps: list[Array]) -> Array
            x float32 [B, C, H/8, W/8]; t float32 [B] ((1000 - timestep) / 1000); caps B features;
            returns the raw DiT output as float32 [B, C, H/8, W/8] (the caller negates it).
        decode(latents: Array) -> np.ndarray
            the final float32 [B, C, h, w] latents as the denoise loop leaves them; the backend
            casts them to its dtype, unscales (z / scaling_factor + shift_factor), decodes and
            returns uint8 [B, H, W, 3] pixels (round half to even of clamp(x/2+0.5, 0, 1) * 255).

A second backend adds a module next to `models/zimage/torch/` and a branch in `create()`; the
shared code does not change. Imports no torch or mlx at import time.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ollimg import config
from ollimg.errors import InvalidInput


@dataclass
class Components:
    encode: Callable[[list[np.ndarray]], list[Any]]
    transformer: Callable[[Any, np.ndarray, list[Any]], Any]
    decode: Callable[[Any], np.ndarray]


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
