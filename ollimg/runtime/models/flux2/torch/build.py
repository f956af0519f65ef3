"""Builds the torch FLUX.2 [klein] components (Qwen3 text encoder, DiT, VAE encoder and decoder,
latent BatchNorm) from a ModelSource."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ollimg.runtime.components.autoencoder_kl.torch import VaeDecoder, VaeEncoder
from ollimg.runtime.components.qwen3.torch import device_refs, load_encoder, streamed_encoder
from ollimg.runtime.models.flux2 import weights
from ollimg.runtime.models.flux2.config import Flux2Config
from ollimg.runtime.models.flux2.pipeline import Components
from ollimg.runtime.models.flux2.torch.transformer import Flux2Transformer
from ollimg.runtime.models.flux2.torch.vae import LatentNorm, patchify, unpatchify
from ollimg.runtime.torch_backend import TorchBackend, load_module

log = logging.getLogger(__name__)


def build(backend: TorchBackend, config: Flux2Config, source) -> Components:
    refs = weights.component_tensors(source, config)
    where = f"model {source.name}"
    resident = sum(backend.device_bytes(refs[part]) for part in ("transformer", "vae_encoder", "vae_decoder"))
    if backend.offload(backend.device_bytes(device_refs(refs["text_encoder"])), resident):
        log.info("the text encoder streams its layers to the device for each prompt (OLLIMG_OFFLOAD)")
        text_encoder = None
        run_text_encoder = streamed_encoder(backend, config.text_encoder, config.text_encoder_outputs,
                                            refs["text_encoder"])
    else:
        text_encoder = load_encoder(backend, config.text_encoder, config.text_encoder_outputs, refs["text_encoder"],
                                    f"{where}: text_encoder")
        run_text_encoder = text_encoder
    transformer = load_module(backend, Flux2Transformer, (config.transformer,), refs["transformer"], f"{where}: transformer")
    encoder = load_module(backend, VaeEncoder, (config.vae,), refs["vae_encoder"], f"{where}: vae")
    decoder = load_module(backend, VaeDecoder, (config.vae,), refs["vae_decoder"], f"{where}: vae")
    if backend.device.type == "cuda":
        decoder.channels_last()
    stats = backend.load_tensors(refs["latent_norm"], dtype=torch.float32)
    norm = LatentNorm(stats["bn.running_mean"], stats["bn.running_var"], config.latent_norm.batch_norm_eps)

    @torch.inference_mode()
    def encode_text(ids: list[np.ndarray], length: int, pad_id: int) -> torch.Tensor:
        return torch.stack(run_text_encoder(ids, length=length, pad_id=pad_id))  # (B, length, D)

    @torch.inference_mode()
    def encode_image(pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(pixels)[None].to(backend.device, backend.torch_dtype)
        z = norm.normalize(patchify(encoder(x)))  # (1, C, h, w)
        return z[0].flatten(1).T  # (h * w, C), row-major

    @torch.inference_mode()
    def prepare(text, refs, ref_sizes, h, w):
        return transformer.prepare(text, refs, ref_sizes, h, w)

    @torch.inference_mode()
    def run_transformer(x: torch.Tensor, t: np.ndarray, context, cache=None) -> torch.Tensor:
        return transformer(x, t, context, cache)

    @torch.inference_mode()
    def decode(latents: torch.Tensor) -> np.ndarray:
        z = unpatchify(norm.denormalize(latents.float())).to(backend.torch_dtype)
        return decoder.pixels(z).cpu().numpy()

    modules = {"text_encoder": text_encoder, "transformer": transformer, "vae_encoder": encoder, "vae": decoder,
               "latent_norm": norm}
    return Components(encode_text, encode_image, prepare, run_transformer, decode, modules)
