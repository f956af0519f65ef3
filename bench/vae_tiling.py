"""How far tiled VAE decoding is from untiled, ollimg and diffusers side by side, on a trained VAE.

Both decode the same final latents of the shipped shapes model (4 prompts, seed 3) whole and in
tiles; pixel differences (levels of 255) between the two decodes of each implementation. Both
compute GroupNorm statistics per tile, which is where the differences come from.

    python bench/vae_tiling.py
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL

from ollimg.builtin import builtin_models
from ollimg.runtime import load

PROMPTS = ["a large red circle at the top left on a blue background", "two small yellow squares on a black background",
           "a large white triangle at the bottom right on a green background", "three small white stars on a red background"]


def stats(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a.astype(int) - b.astype(int))
    return f"mean {d.mean():.2f}  p99 {np.percentile(d, 99):.0f}  max {d.max()}"


def main() -> None:
    model = builtin_models()["shapes"]
    ours = load(str(model), backend="torch", device="cpu", dtype="float32")
    vae = ours.components.modules["vae"]
    ref = AutoencoderKL.from_pretrained(model / "vae").eval()
    for size, tile in ((256, 16), (512, 32)):
        latents = ours.generate(PROMPTS, width=size, height=size, seed=3).latents
        vae.tile, vae.overlap = 128, 16
        whole = np.asarray(ours.components.decode(ours.backend.from_numpy(latents)))
        vae.tile, vae.overlap = tile, tile // 4
        tiled = np.asarray(ours.components.decode(ours.backend.from_numpy(latents)))
        vae.tile, vae.overlap = 128, 16
        z = torch.from_numpy(latents) / ref.config.scaling_factor + ref.config.shift_factor
        with torch.inference_mode():
            ref.disable_tiling()
            ref_whole = ref.decode(z).sample
            ref.enable_tiling()
            ref.tile_sample_min_size, ref.tile_latent_min_size, ref.tile_overlap_factor = tile * 8, tile, 0.25
            ref_tiled = ref.decode(z).sample
        px = lambda x: ((x / 2 + 0.5).clamp(0, 1) * 255).round().numpy()  # noqa: E731
        print(f"{size}x{size}, tiles of {tile} latent cells, overlap 1/4:")
        print(f"  ollimg    tiled vs whole: {stats(whole, tiled)}")
        print(f"  diffusers tiled vs whole: {stats(px(ref_whole), px(ref_tiled))}")


if __name__ == "__main__":
    main()
