"""The parity reference: diffusers' ZImagePipeline run with our initial latents, and the gates.

Shared by the torch, CUDA and MLX parity tests (any backend's Pipeline works with `compare`).
diffusers is a test-only dependency.
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from ollimg.runtime.noise import noise


def reference_pipe(path, dtype, device="cpu"):
    """diffusers' pipeline for the model at `path`, in `dtype`, progress bar off."""
    pipe = diffusers.ZImagePipeline.from_pretrained(path, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_reference(pipe, prompts, *, width, height, steps, guidance, latents, negative=None, n=1, **extra):
    """(final latents float32, pixels uint8 [B, H, W, 3]) from diffusers with our initial latents."""
    kwargs = dict(height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                  num_images_per_prompt=n, latents=torch.from_numpy(latents), **extra)
    if negative is not None:
        kwargs["negative_prompt"] = list(negative)
    final = pipe(list(prompts), output_type="latent", **kwargs).images
    kwargs["latents"] = torch.from_numpy(latents)  # fresh lists: the pipeline rewrites a prompt list in place
    if negative is not None:
        kwargs["negative_prompt"] = list(negative)
    images = pipe(list(prompts), output_type="np", **kwargs).images
    return final.float().cpu().numpy(), (images * 255).round().astype(np.uint8)


def compare(ours, reference, prompts, *, width=64, height=64, steps=3, guidance=0.0, negative=None, n=1,
            seed=7, latent_rtol=1e-4, levels=1, **extra):
    total = len(prompts) * n
    latents = noise(seed, total, (16, height // 8, width // 8))
    ref_latents, ref_pixels = run_reference(reference, prompts, width=width, height=height, steps=steps,
                                            guidance=guidance, latents=latents, negative=negative, n=n, **extra)
    ours_extra = {k: v for k, v in extra.items() if k in ("cfg_truncation", "cfg_normalization", "max_sequence_length")}
    result = ours.generate(list(prompts), negative_prompt=list(negative) if negative else None, width=width,
                           height=height, steps=steps, guidance=guidance, seed=seed, n=n, **ours_extra)
    pixels = np.stack([np.asarray(im) for im in result.images])
    assert pixels.shape == ref_pixels.shape
    latent_error = np.abs(result.latents - ref_latents).max() / np.abs(ref_latents).max()
    pixel_error = np.abs(pixels.astype(int) - ref_pixels).max()
    print(f"parity: latents within {latent_error:.2e} of their largest value, pixels within {pixel_error} levels")
    assert latent_error <= latent_rtol, f"latents differ by {latent_error:.2e} of their largest value (bound {latent_rtol})"
    assert pixel_error <= levels, f"pixels differ by up to {pixel_error} levels (bound {levels})"
    return result


# The pipeline cases every backend must match diffusers on (prompts, options for `compare`).
CASES = [
    pytest.param(["a photo of a cat sitting on a red chair"], {}, id="square"),
    pytest.param(["a lighthouse at dusk"], dict(width=96, height=48, steps=2), id="non_square"),
    pytest.param(["a bowl of ramen"], dict(guidance=4.0, negative=["blurry, low quality"], width=48, height=48),
                 id="cfg_with_negative_prompt"),
    # Truncation 0.5 switches CFG off for the later steps (the batch shrinks); normalization 1.05
    # clips the guided norm.
    pytest.param(["an astronaut riding a horse"], dict(guidance=5.0, negative=["watermark"], steps=4, width=48, height=32,
                                                        cfg_truncation=0.5, cfg_normalization=1.05),
                 id="cfg_truncation_and_normalization"),
    pytest.param(["cat", "a watercolor painting of a lighthouse at dusk with seagulls, film grain, highly detailed"],
                 dict(n=2, guidance=2.0, negative=["", "blurry"], width=32, height=48),
                 id="batch_of_prompts_with_different_lengths"),
    pytest.param(["the quick brown fox jumps over the lazy dog " * 6], dict(max_sequence_length=9, width=32, height=32),
                 id="prompt_truncation"),
    pytest.param(["東京の夜景、ネオンの光 — Café crème, naïve façade 🐼"], dict(width=32, height=32), id="unicode_prompt"),
]


def compare_case(ours, reference, prompts, options):
    """One of CASES; image i of the batch gets seed 7 + i."""
    result = compare(ours, reference, prompts, **options)
    assert result.seeds == list(range(7, 7 + len(prompts) * options.get("n", 1)))
    return result
