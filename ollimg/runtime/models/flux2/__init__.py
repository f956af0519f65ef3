"""FLUX.2 [klein] (black-forest-labs/FLUX.2-klein-4B and -9B, `Flux2KleinPipeline`): a double- and
single-stream DiT conditioned on three Qwen3 hidden states, the FLUX.2 VAE (AutoencoderKL with a
BatchNorm over 2x2-patchified latents), reference images as extra tokens, flow-matching Euler with
klein's empirical time shift. Distilled models (4 steps, no CFG) and the undistilled "base" ones.

    config.py     the transformer and latent-norm configs, the components' configs, the defaults
    weights.py    key maps, shapes, the FP8 set
    layout.py     position ids, RoPE tables, reference-image preparation, the empirical mu (numpy)
    pipeline.py   prompts, references, guidance, the loop's velocity, decode
    torch/, mlx/  transformer.py (the DiT), vae.py (patching, latent BatchNorm), build.py

Imports no torch or mlx until `load` builds on a backend.
"""

from __future__ import annotations


def load(source, backend):
    """The Flux2Pipeline of a ModelSource on a backend (a TorchBackend or MlxBackend)."""
    from ollimg.runtime.models.flux2.config import read_config
    from ollimg.runtime.models.flux2.pipeline import Flux2Pipeline
    from ollimg.runtime.tokenizer import load_tokenizer

    config = read_config(source)
    tokenizer = load_tokenizer(source)
    if backend.name == "torch":
        from ollimg.runtime.models.flux2.torch.build import build
    else:
        from ollimg.runtime.models.flux2.mlx.build import build
    return Flux2Pipeline(source.name, source.digest, config, tokenizer, backend, build(backend, config, source))
