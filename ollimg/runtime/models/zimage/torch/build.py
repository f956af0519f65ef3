"""Builds the torch Z-Image components (Qwen3 text encoder, DiT, VAE decoder) from a ModelSource."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ollimg.runtime.components.autoencoder_kl.torch import VaeDecoder, VaeEncoder
from ollimg.runtime.components.qwen3.torch import device_refs, load_encoder, streamed_encoder
from ollimg.runtime import torch_compile
from ollimg.runtime.cuda_graphs import ShapeGraphs
from ollimg.runtime.models.zimage import layout, weights
from ollimg.runtime.models.zimage.config import ZImageConfig
from ollimg.runtime.models.zimage.pipeline import Components
from ollimg.runtime.models.zimage.torch.transformer import ZImageTransformer
from ollimg.runtime.torch_backend import TorchBackend, load_module

log = logging.getLogger(__name__)


def device_pixels(vae: VaeDecoder, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The final float32 latents -> uint8 pixels (B, H, W, 3), still on the device, decoded in `dtype`."""
    c = vae.config
    return vae.pixels(latents.to(dtype) / c.scaling_factor + c.shift_factor)


def build(backend: TorchBackend, config: ZImageConfig, source) -> Components:
    te_refs, dit_refs, vae_refs = weights.component_tensors(source, config)
    offload = backend.offload(backend.device_bytes(device_refs(te_refs)),
                              backend.device_bytes(dit_refs) + backend.device_bytes(vae_refs))
    if offload:
        log.info("the text encoder streams its layers to the device for each prompt (OLLIMG_OFFLOAD)")
        text_encoder, encode = None, streamed_encoder(backend, config.text_encoder, config.text_encoder_outputs, te_refs)
    else:
        text_encoder = load_encoder(backend, config.text_encoder, config.text_encoder_outputs, te_refs, "text_encoder")
        # Compiled, its layers replay as one CUDA graph per prompt length: 35 -> 8 ms on the H200.
        graphs = ShapeGraphs(text_encoder.hidden_states) if backend.device.type == "cuda" else None

        @torch.inference_mode()
        def encode(ids: list[np.ndarray]) -> list[torch.Tensor]:
            notice_first_run(("text", len(ids) == 1))
            return text_encoder(ids, layers=graphs if compiled.compiled else None)
    transformer = load_module(backend, ZImageTransformer, (config.transformer,), dit_refs, "transformer")
    vae = load_module(backend, VaeDecoder, (config.vae,), vae_refs, "vae")
    if backend.device.type == "cuda":
        transformer.fuse()  # one GEMM for q/k/v and one for gate/up (a copy: not worth it on mapped CPU weights)
        vae.channels_last()
    # The repeated blocks: the DiT's, and the text encoder's layers when resident (eager, a prompt's
    # ~36 layers are bound by the CPU's launching: 55 ms of a 1024x1024 generation on an H200).
    encoder_layers = list(text_encoder.layers) if text_encoder is not None else []
    compiled = torch_compile.Regional([*transformer.noise_refiner, *transformer.context_refiner, *transformer.layers,
                                       *encoder_layers], backend.device)

    def notice_first_run(variant) -> None:
        if compiled.first_run(variant) and components.on_status:
            components.on_status(torch_compile.NOTICE)

    @torch.inference_mode()
    def run_transformer(x: torch.Tensor, t: np.ndarray, caps: list[torch.Tensor], cache=None) -> torch.Tensor:
        # One graph per batch kind: a batch of one, larger ones, and prompts padded to different lengths.
        notice_first_run((len(x) == 1, len({layout.padded(len(f)) for f in caps}) == 1))
        return transformer(x, t, caps, cache)

    @torch.inference_mode()
    def decode(latents: torch.Tensor) -> np.ndarray:
        return device_pixels(vae, latents, backend.torch_dtype).cpu().numpy()

    modules = {"text_encoder": text_encoder, "transformer": transformer, "vae": vae}
    encoder_refs = weights.encoder_tensors(source, config)

    @torch.inference_mode()
    def encode_image(pixels: np.ndarray) -> np.ndarray:
        # Loaded on the first edit: text-to-image never holds the encoder's weights.
        if "vae_encoder" not in modules:
            modules["vae_encoder"] = load_module(backend, VaeEncoder, (config.vae,), encoder_refs, "vae")
        x = torch.from_numpy(pixels).to(backend.device, backend.torch_dtype)
        return modules["vae_encoder"].moments(x).float().cpu().numpy()

    components = Components(encode=encode, transformer=run_transformer, decode=decode, modules=modules,
                            begin=lambda: compiled.begin(components.on_status), end=compiled.end,
                            encode_image=encode_image if encoder_refs is not None else None)
    return components
