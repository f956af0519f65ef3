"""Builds the MLX FLUX.2 [klein] components (text encoder, DiT, VAE encoder and decoder) from a ModelSource.

# Same as torch/build.py.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ollimg.runtime.models.flux2 import weights
from ollimg.runtime.models.flux2.config import Flux2Config
from ollimg.runtime.models.flux2.mlx.transformer import Flux2Transformer
from ollimg.runtime.models.flux2.mlx.vae import LatentNorm, VaeEncoder, patchify, unpatchify
from ollimg.runtime.models.flux2.pipeline import Components
from ollimg.runtime.models.zimage.mlx import _load, evaluate
from ollimg.runtime.models.zimage.mlx.vae import VAE, mlx_layout


def build(backend, config: Flux2Config, source, encode_text=None) -> Components:
    refs = weights.component_tensors(source, config)
    where = f"model {source.name}"
    transformer = _load(backend, Flux2Transformer(config.transformer), refs["transformer"], f"{where}: transformer")
    encoder = _load(backend, VaeEncoder(config.vae), refs["vae_encoder"], f"{where}: vae", layout=mlx_layout)
    decoder = _load(backend, VAE(config.vae), refs["vae_decoder"], f"{where}: vae", layout=mlx_layout)
    stats = backend.load_tensors(refs["vae_norm"])
    norm = LatentNorm(stats["bn.running_mean"], stats["bn.running_var"], config.vae.batch_norm_eps)

    def encode_image(pixels: np.ndarray) -> mx.array:
        z = norm.normalize(patchify(encoder(mx.array(pixels.transpose(1, 2, 0))[None])))  # (1, C, h, w)
        tokens = z[0].reshape(z.shape[1], -1).T  # (h * w, C)
        evaluate(tokens)
        return tokens

    def prepare(text, refs, ref_sizes, h, w):
        context = transformer.prepare(text, refs, ref_sizes, h, w)
        evaluate(context.txt)
        return context

    def run_transformer(x: mx.array, t: np.ndarray, context) -> mx.array:
        out = transformer(x, t, context)
        evaluate(out)  # step by step: progress, cancelling and timings see real work
        return out

    def decode(latents: mx.array) -> np.ndarray:
        z = unpatchify(norm.denormalize(latents.astype(mx.float32)))
        pixels = decoder.decode(z).astype(mx.float32)  # (B, H, W, 3)
        evaluate(pixels)
        return (np.clip(np.array(pixels) / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)

    modules = {"transformer": transformer, "vae_encoder": encoder, "vae_decoder": decoder}
    return Components(encode_text, encode_image, prepare, run_transformer, decode, modules)
