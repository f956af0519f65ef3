"""Builds the torch Z-Image components (text encoder, DiT, VAE decoder) from a ModelSource."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ollimg.runtime.backend import Components
from ollimg.runtime.models.zimage import weights
from ollimg.runtime.models.zimage.config import ZImageConfig
from ollimg.runtime.models.zimage.torch.text_encoder import TextEncoder
from ollimg.runtime.models.zimage.torch.transformer import ZImageTransformer
from ollimg.runtime.models.zimage.torch.vae import VaeDecoder
from ollimg.runtime.source import ModelSource, select
from ollimg.runtime.torch_backend import TorchBackend, assign

log = logging.getLogger(__name__)


def _load(backend: TorchBackend, module_cls, args, refs, where: str, resident: bool = True):
    with torch.device("meta"):
        module = module_cls(*args)
    return assign(module, backend.load_tensors(refs, resident=resident), where).eval()


def build(backend: TorchBackend, config: ZImageConfig, source: ModelSource) -> Components:
    te_refs = select(source.tensors("text_encoder"), weights.text_encoder_shapes(config.text_encoder),
                     weights.text_encoder_ignored(config.text_encoder), weights.FP8, f"model {source.name}: text_encoder",
                     strip=weights.TEXT_ENCODER_PREFIX)
    dit_refs = select(source.tensors("transformer"), weights.transformer_shapes(config.transformer),
                      weights.TRANSFORMER_IGNORED, weights.FP8, f"model {source.name}: transformer")
    vae_refs = select(source.tensors("vae"), weights.vae_decoder_shapes(config.vae), weights.VAE_IGNORED,
                      weights.FP8, f"model {source.name}: vae")
    offload = backend.offload(backend.device_bytes(te_refs), backend.device_bytes(dit_refs) + backend.device_bytes(vae_refs))
    text_encoder = None if offload else _load(backend, TextEncoder, (config.text_encoder,), te_refs, "text_encoder")
    transformer = _load(backend, ZImageTransformer, (config.transformer,), dit_refs, "transformer")
    vae = _load(backend, VaeDecoder, (config.vae,), vae_refs, "vae")
    vae_config = config.vae
    if offload:
        log.info("the text encoder is uploaded for each prompt and freed after (OLLIMG_OFFLOAD)")

    @torch.inference_mode()
    def encode(ids: list[np.ndarray]) -> list[torch.Tensor]:
        if text_encoder is not None:
            return text_encoder(ids)
        encoder = _load(backend, TextEncoder, (config.text_encoder,), te_refs, "text_encoder", resident=False)
        try:
            return encoder(ids)
        finally:
            del encoder
            backend.empty_cache()

    @torch.inference_mode()
    def run_transformer(x: torch.Tensor, t: np.ndarray, caps: list[torch.Tensor]) -> torch.Tensor:
        return transformer(x, t, caps)

    @torch.inference_mode()
    def decode(latents: torch.Tensor) -> np.ndarray:
        z = latents.to(backend.torch_dtype) / vae_config.scaling_factor + vae_config.shift_factor
        pixels = vae.decode(z).float()
        pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return (pixels * 255).round().astype(np.uint8)

    components = Components(encode=encode, transformer=run_transformer, decode=decode)
    components.modules = {"text_encoder": text_encoder, "transformer": transformer, "vae": vae}
    return components
