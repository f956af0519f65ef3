"""Builds the MLX Z-Image components (text encoder, DiT, VAE decoder) from a ModelSource, and puts
checked weights into MLX modules.

Only this package and `runtime/mlx_backend.py` import mlx. `set_weights` refuses anything missing,
unexpected or of the wrong shape, so a broken model fails at load, never with a wrong image.
float8 weights are dequantized here, once, to the compute dtype (w * scale per output channel).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from ollimg.errors import InvalidModel, OutOfMemory
from ollimg.runtime.backend import Components
from ollimg.runtime.models.zimage import weights
from ollimg.runtime.models.zimage.config import ZImageConfig
from ollimg.runtime.source import ModelSource


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
        if name.endswith(weights.FP8_SCALE_SUFFIX):
            continue
        scale = tensors.get(name + weights.FP8_SCALE_SUFFIX)
        if scale is not None:
            value = (mx.from_fp8(value, dtype=mx.float32) * scale[:, None]).astype(dtype)
        out[name] = value
    return out


def _load(backend, module: nn.Module, refs, component: str, layout=None) -> nn.Module:
    tensors = dequantize(backend.load_tensors(refs), backend.mx_dtype)
    if layout is not None:
        tensors = {k: layout(k, v) for k, v in tensors.items()}
    set_weights(module, tensors, component, backend.mx_dtype)
    backend.weight_bytes += sum(v.nbytes for _, v in tree_flatten(module.parameters()))
    return module


def build(backend, config: ZImageConfig, source: ModelSource) -> Components:
    from ollimg.runtime.models.zimage.mlx.text_encoder import TextEncoder
    from ollimg.runtime.models.zimage.mlx.transformer import ZImageTransformer
    from ollimg.runtime.models.zimage.mlx.vae import VAE, mlx_layout

    where = f"model {source.name}"
    te_refs, dit_refs, vae_refs = weights.component_tensors(source, config)
    text_encoder = _load(backend, TextEncoder(config.text_encoder), te_refs, f"{where}: text_encoder")
    transformer = _load(backend, ZImageTransformer(config.transformer), dit_refs, f"{where}: transformer")
    vae = _load(backend, VAE(config.vae), vae_refs, f"{where}: vae", layout=mlx_layout)
    transformer.compiled = backend.compile
    vae_config = config.vae

    def encode(ids: list[np.ndarray]) -> list[mx.array]:
        lens = [len(i) for i in ids]
        batch = np.zeros((len(ids), max(lens)), dtype=np.int32)  # right padding: causal, so never seen
        for row, i in zip(batch, ids):
            row[: len(i)] = i
        feats = text_encoder(mx.array(batch))
        out = [feats[k, :n] for k, n in enumerate(lens)]
        evaluate(out)
        return out

    def run_transformer(x: mx.array, t: np.ndarray, caps: list[mx.array]) -> mx.array:
        out = transformer(x, mx.array(np.asarray(t, np.float32)), caps)
        evaluate(out)  # step by step: progress, cancelling and timings see real work
        return out

    def decode(latents: mx.array) -> np.ndarray:
        z = latents.astype(backend.mx_dtype) / vae_config.scaling_factor + vae_config.shift_factor
        pixels = vae.decode(z).astype(mx.float32)  # (B, H, W, 3)
        evaluate(pixels)
        pixels = np.array(pixels)
        return (np.clip(pixels / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)

    components = Components(encode=encode, transformer=run_transformer, decode=decode)
    components.modules = {"text_encoder": text_encoder, "transformer": transformer, "vae": vae}
    return components
