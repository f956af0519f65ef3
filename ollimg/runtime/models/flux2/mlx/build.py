"""Builds the MLX FLUX.2 [klein] components (Qwen3 text encoder, DiT, VAE encoder and decoder,
latent BatchNorm) from a ModelSource. Same as torch/build.py."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ollimg.runtime.components.autoencoder_kl.mlx import VaeDecoder, VaeEncoder, mlx_layout
from ollimg.runtime.components.qwen3.mlx import TextEncoder
from ollimg.runtime.mlx_backend import MlxBackend, evaluate, load_module
from ollimg.runtime.models.flux2 import weights
from ollimg.runtime.models.flux2.config import Flux2Config
from ollimg.runtime.models.flux2.mlx.transformer import Flux2Transformer
from ollimg.runtime.models.flux2.mlx.vae import LatentNorm, patchify, unpatchify
from ollimg.runtime.models.flux2.pipeline import Components


def build(backend: MlxBackend, config: Flux2Config, source) -> Components:
    refs = weights.component_tensors(source, config)
    where = f"model {source.name}"
    text_encoder = load_module(backend, TextEncoder(config.text_encoder, config.text_encoder_outputs),
                               refs["text_encoder"], f"{where}: text_encoder")
    transformer = load_module(backend, Flux2Transformer(config.transformer), refs["transformer"], f"{where}: transformer")
    encoder = load_module(backend, VaeEncoder(config.vae), refs["vae_encoder"], f"{where}: vae", layout=mlx_layout)
    decoder = load_module(backend, VaeDecoder(config.vae), refs["vae_decoder"], f"{where}: vae", layout=mlx_layout)
    stats = backend.load_tensors(refs["latent_norm"], dtype=mx.float32)
    norm = LatentNorm(stats["bn.running_mean"], stats["bn.running_var"], config.latent_norm.batch_norm_eps)

    def encode_text(ids: list[np.ndarray], length: int, pad_id: int) -> mx.array:
        out = mx.stack(text_encoder(ids, length=length, pad_id=pad_id))  # (B, length, D)
        evaluate(out)
        return out

    def encode_image(pixels: np.ndarray) -> mx.array:
        z = norm.normalize(patchify(encoder(mx.array(pixels.transpose(1, 2, 0))[None])))  # (1, C, h, w)
        tokens = z[0].reshape(z.shape[1], -1).T  # (h * w, C), row-major
        evaluate(tokens)
        return tokens

    def prepare(text, refs, ref_sizes, h, w):
        context = transformer.prepare(text, refs, ref_sizes, h, w)
        evaluate(context.txt)
        return context

    def run_transformer(x: mx.array, t: np.ndarray, context, cache=None) -> mx.array:
        out = transformer(x, t, context, cache)
        evaluate(out)  # step by step: progress, cancelling and timings see real work
        return out

    def decode(latents: mx.array) -> np.ndarray:
        z = unpatchify(norm.denormalize(latents.astype(mx.float32)))
        pixels = decoder.decode(z).astype(mx.float32)  # (B, H, W, 3)
        evaluate(pixels)
        return (np.clip(np.array(pixels) / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)

    modules = {"text_encoder": text_encoder, "transformer": transformer, "vae_encoder": encoder, "vae": decoder,
               "latent_norm": norm}
    return Components(encode_text, encode_image, prepare, run_transformer, decode, modules)
