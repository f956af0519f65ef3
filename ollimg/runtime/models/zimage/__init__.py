"""Z-Image (Tongyi-MAI/Z-Image-Turbo, `ZImagePipeline`): a single-stream DiT conditioned on Qwen3's
hidden_states[-2], the FLUX VAE, flow-matching Euler with a static shift.

    config.py     the transformer config, the components' configs, the recommended defaults
    weights.py    key maps, shapes, the FP8 set
    layout.py     sequence padding, position ids, RoPE angles (numpy)
    pipeline.py   prompts, guidance, the loop's velocity, decode, previews
    torch/, mlx/  transformer.py (the DiT) and build.py (components from a ModelSource)

Imports no torch or mlx until `load` builds on a backend.
"""

from __future__ import annotations


def load(source, backend):
    """The ZImagePipeline of a ModelSource on a backend (a TorchBackend or MlxBackend)."""
    from ollimg.runtime.models.zimage.config import read_config
    from ollimg.runtime.models.zimage.pipeline import ZImagePipeline
    from ollimg.runtime.tokenizer import load_tokenizer

    config = read_config(source)
    tokenizer = load_tokenizer(source)
    if backend.name == "torch":
        from ollimg.runtime.models.zimage.torch.build import build
    else:
        from ollimg.runtime.models.zimage.mlx.build import build
    return ZImagePipeline(source.name, source.digest, config, tokenizer, backend, build(backend, config, source))
