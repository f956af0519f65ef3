"""Builds the MLX Z-Image components (Qwen3 text encoder, DiT, VAE decoder) from a ModelSource.
Same as torch/build.py.

Only `mlx/` files and `runtime/mlx_backend.py` import mlx. `load_module` refuses anything missing,
unexpected or of the wrong shape, so a broken model fails at load, never with a wrong image;
float8 weights are dequantized there, once, to the compute dtype.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ollimg.runtime.components.autoencoder_kl.mlx import VaeDecoder, VaeEncoder, mlx_layout
from ollimg.runtime.components.qwen3.mlx import TextEncoder
from ollimg.runtime.mlx_backend import MlxBackend, evaluate, load_module
from ollimg.runtime.models.zimage import weights
from ollimg.runtime.models.zimage.config import ZImageConfig
from ollimg.runtime.models.zimage.mlx.transformer import ZImageTransformer
from ollimg.runtime.models.zimage.pipeline import Components


def build(backend: MlxBackend, config: ZImageConfig, source) -> Components:
    where = f"model {source.name}"
    te_refs, dit_refs, vae_refs = weights.component_tensors(source, config)
    text_encoder = load_module(backend, TextEncoder(config.text_encoder, config.text_encoder_outputs), te_refs,
                               f"{where}: text_encoder")
    transformer = load_module(backend, ZImageTransformer(config.transformer), dit_refs, f"{where}: transformer")
    vae = load_module(backend, VaeDecoder(config.vae), vae_refs, f"{where}: vae", layout=mlx_layout)
    transformer.compiled = backend.compile
    vae_config = config.vae

    def encode(ids: list[np.ndarray]) -> list[mx.array]:
        out = text_encoder(ids)
        evaluate(out)
        return out

    def run_transformer(x: mx.array, t: np.ndarray, caps: list[mx.array], cache=None) -> mx.array:
        out = transformer(x, mx.array(np.asarray(t, np.float32)), caps, cache)
        evaluate(out)  # step by step: progress, cancelling and timings see real work
        return out

    def decode(latents: mx.array) -> np.ndarray:
        z = latents.astype(backend.mx_dtype) / vae_config.scaling_factor + vae_config.shift_factor
        pixels = vae.decode(z).astype(mx.float32)  # (B, H, W, 3)
        evaluate(pixels)
        pixels = np.array(pixels)
        return (np.clip(pixels / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)

    modules = {"text_encoder": text_encoder, "transformer": transformer, "vae": vae}
    encoder_refs = weights.encoder_tensors(source, config)

    def encode_image(pixels: np.ndarray) -> np.ndarray:
        # Loaded on the first edit: text-to-image never holds the encoder's weights.
        if "vae_encoder" not in modules:
            modules["vae_encoder"] = load_module(backend, VaeEncoder(config.vae), encoder_refs, f"{where}: vae",
                                                 layout=mlx_layout)
        moments = modules["vae_encoder"].moments(mx.array(pixels.transpose(0, 2, 3, 1))).astype(mx.float32)
        evaluate(moments)
        return np.array(moments)

    return Components(encode=encode, transformer=run_transformer, decode=decode, modules=modules,
                      encode_image=encode_image if encoder_refs is not None else None)
