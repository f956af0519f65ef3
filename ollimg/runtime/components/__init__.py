"""Model components that several families share: plain module files per backend, each with its
config dataclass (read from the component's config.json) and its key map as data.

    qwen3/           the Qwen3 text encoder
    autoencoder_kl/  the AutoencoderKL decoder and encoder

A component knows no family: a family picks the hidden states, the scaling, the packing.
"""
