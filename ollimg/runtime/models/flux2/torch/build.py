"""Builds the torch FLUX.2 [klein] components (text encoder, DiT, VAE encoder and decoder) from a ModelSource."""

from __future__ import annotations

import numpy as np
import torch

from ollimg.runtime.models.flux2 import weights
from ollimg.runtime.models.flux2.config import Flux2Config
from ollimg.runtime.models.flux2.pipeline import Components
from ollimg.runtime.models.flux2.torch.transformer import Flux2Transformer
from ollimg.runtime.models.flux2.torch.vae import LatentNorm, VaeEncoder, patchify, unpatchify
from ollimg.runtime.models.zimage.torch.vae import VaeDecoder
from ollimg.runtime.torch_backend import TorchBackend, assign


def _load(backend: TorchBackend, module_cls, args, refs, where: str):
    with torch.device("meta"):
        module = module_cls(*args)
    return assign(module, backend.load_tensors(refs), where).eval()


def build(backend: TorchBackend, config: Flux2Config, source, encode_text=None) -> Components:
    refs = weights.component_tensors(source, config)
    where = f"model {source.name}"
    transformer = _load(backend, Flux2Transformer, (config.transformer,), refs["transformer"], f"{where}: transformer")
    encoder = _load(backend, VaeEncoder, (config.vae,), refs["vae_encoder"], f"{where}: vae")
    decoder = _load(backend, VaeDecoder, (config.vae,), refs["vae_decoder"], f"{where}: vae")
    stats = backend.load_tensors(refs["vae_norm"], dtype=torch.float32)
    norm = LatentNorm(stats["bn.running_mean"], stats["bn.running_var"], config.vae.batch_norm_eps)

    @torch.inference_mode()
    def encode_image(pixels: np.ndarray) -> torch.Tensor:
        z = norm.normalize(patchify(encoder(torch.from_numpy(pixels)[None].to(backend.device, backend.torch_dtype))))
        return z[0].flatten(1).T  # (h * w, C)

    @torch.inference_mode()
    def prepare(text, refs, ref_sizes, h, w):
        return transformer.prepare(text, refs, ref_sizes, h, w)

    @torch.inference_mode()
    def run_transformer(x: torch.Tensor, t: np.ndarray, context) -> torch.Tensor:
        return transformer(x, t, context)

    @torch.inference_mode()
    def decode(latents: torch.Tensor) -> np.ndarray:
        z = unpatchify(norm.denormalize(latents.float())).to(backend.torch_dtype)
        pixels = decoder.decode(z).float()
        pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return (pixels * 255).round().astype(np.uint8)

    modules = {"transformer": transformer, "vae_encoder": encoder, "vae_decoder": decoder}
    return Components(encode_text, encode_image, prepare, run_transformer, decode, modules)
