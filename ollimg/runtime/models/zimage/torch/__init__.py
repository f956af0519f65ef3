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
from ollimg.runtime.source import ModelSource
from ollimg.runtime.torch_backend import TorchBackend, assign

log = logging.getLogger(__name__)


def _load(backend: TorchBackend, module_cls, args, refs, where: str, resident: bool = True):
    with torch.device("meta"):
        module = module_cls(*args)
    return assign(module, backend.load_tensors(refs, resident=resident), where).eval()


def _streamed_text_encoder(backend: TorchBackend, config: ZImageConfig, te_refs: dict):
    """The text encoder for when the device is short of memory: the embedding table stays mapped
    in CPU memory (a lookup there), and each layer's weights are uploaded when its turn comes and
    freed after it ran, so the device holds one layer at a time beside the rest of the model."""
    with torch.device("meta"):
        encoder = TextEncoder(config.text_encoder)
    table = backend.load_tensors({"embed_tokens.weight": te_refs["embed_tokens.weight"]}, resident=False, device="cpu")
    assign(encoder.embed_tokens, {"weight": table["embed_tokens.weight"]}, "text_encoder")
    per_layer = [{name.split(".", 2)[2]: ref for name, ref in te_refs.items() if name.startswith(f"layers.{i}.")}
                 for i in range(len(encoder.layers))]

    @torch.inference_mode()
    def encode(ids: list[np.ndarray]) -> list[torch.Tensor]:
        x, cos, sin = encoder.embed(ids, backend.device, backend.torch_dtype)
        for layer, refs in zip(encoder.layers, per_layer):
            x = assign(layer, backend.load_tensors(refs, resident=False), "text_encoder")(x, cos, sin)
            layer.to("meta")  # frees this layer's device copy
        return [x[i, : len(item)] for i, item in enumerate(ids)]

    return encode


def build(backend: TorchBackend, config: ZImageConfig, source: ModelSource) -> Components:
    te_refs, dit_refs, vae_refs = weights.component_tensors(source, config)
    offload = backend.offload(backend.device_bytes(te_refs), backend.device_bytes(dit_refs) + backend.device_bytes(vae_refs))
    if offload:
        log.info("the text encoder streams its layers to the device for each prompt (OLLIMG_OFFLOAD)")
        text_encoder, encode = None, _streamed_text_encoder(backend, config, te_refs)
    else:
        text_encoder = _load(backend, TextEncoder, (config.text_encoder,), te_refs, "text_encoder")
        encode = torch.inference_mode()(text_encoder)
    transformer = _load(backend, ZImageTransformer, (config.transformer,), dit_refs, "transformer")
    vae = _load(backend, VaeDecoder, (config.vae,), vae_refs, "vae")
    vae_config = config.vae

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
