"""The AutoencoderKL decoder and encoder: config, key map, tiles, torch and MLX modules.

The family scales or normalises latents before `decode` (z / scaling_factor + shift_factor,
or a latent BatchNorm and unpatchifying).
"""
