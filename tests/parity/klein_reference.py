"""The klein parity reference: diffusers' Flux2KleinPipeline run with our initial latents, and the gates.

Shared by the torch, CUDA and MLX klein parity tests. diffusers is a test-only dependency.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ollimg.runtime.models.flux2.pipeline import noise


def reference_pipe(path, dtype, device="cpu"):
    """diffusers' pipeline for the model at `path`, in `dtype`, progress bar off."""
    import diffusers

    pipe = diffusers.Flux2KleinPipeline.from_pretrained(path, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_reference(pipe, prompts, *, width, height, steps, guidance, latents, negative=None, n=1, images=None,
                  max_sequence_length=512):
    """(final packed latents float32 [B, C, h, w], pixels uint8 [B, H, W, 3]) from diffusers with our latents."""
    final = []

    def keep_last(p, step, t, kwargs):
        final.append(kwargs["latents"])
        return {}

    kwargs = dict(height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                  num_images_per_prompt=n, latents=torch.from_numpy(latents).to(pipe.device),
                  max_sequence_length=max_sequence_length, callback_on_step_end=keep_last)
    if images:
        kwargs["image"] = list(images)
    if negative is not None:
        kwargs["negative_prompt_embeds"] = pipe.encode_prompt(list(negative), max_sequence_length=max_sequence_length)[0]
    out = pipe(prompt=list(prompts), output_type="np", **kwargs).images
    B, C, h, w = latents.shape
    packed = final[-1].float().cpu().numpy()  # (B, h * w, C)
    return packed.transpose(0, 2, 1).reshape(B, C, h, w), (out * 255).round().astype(np.uint8)


def compare(ours, reference, prompts, *, width=64, height=64, steps=3, guidance=1.0, negative=None, n=1, images=None,
            seed=7, max_sequence_length=64, latent_rtol=1e-4, levels=1):
    total = len(prompts) * n
    channels, multiple = ours.config.transformer.in_channels, ours.multiple
    if images and width is None:
        size = ours._reference_pixels(images[:1])[0].shape[1:]
        height, width = size
    latents = noise(seed, total, (channels, height // multiple, width // multiple))
    ref_latents, ref_pixels = run_reference(reference, prompts, width=width, height=height, steps=steps,
                                            guidance=guidance, latents=latents, negative=negative, n=n, images=images,
                                            max_sequence_length=max_sequence_length)
    result = ours.generate(list(prompts), negative_prompt=list(negative) if negative else None,
                           width=None if images and width is None else width, height=height, steps=steps,
                           guidance=guidance, seed=seed, n=n, images=images, max_sequence_length=max_sequence_length)
    pixels = np.stack([np.asarray(im) for im in result.images])
    assert pixels.shape == ref_pixels.shape
    latent_error = np.abs(result.latents - ref_latents).max() / np.abs(ref_latents).max()
    pixel_error = np.abs(pixels.astype(int) - ref_pixels).max()
    print(f"klein parity: latents within {latent_error:.2e} of their largest value, pixels within {pixel_error} levels")
    assert latent_error <= latent_rtol, f"latents differ by {latent_error:.2e} of their largest value (bound {latent_rtol})"
    assert pixel_error <= levels, f"pixels differ by up to {pixel_error} levels (bound {levels})"
    return result


def reference_image(width: int, height: int, seed: int = 0):
    """A smooth random RGB image (a tiny VAE turns noise into noise; gradients keep values in range)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = [np.sin(6.0 * (a * x + b * y) + c) for a, b, c in rng.uniform(-1, 1, (3, 3))]
    return Image.fromarray(((np.stack(rgb, -1) * 0.5 + 0.5) * 255).round().astype(np.uint8))


# The pipeline cases every backend must match diffusers on: (prompts, options for `compare`), on the
# distilled model; CFG cases run on the base model (BASE_CASES).
CASES = [
    pytest.param(["a photo of a cat sitting on a red chair"], {}, id="text_only_square"),
    pytest.param(["a lighthouse at dusk"], dict(width=96, height=48, steps=2), id="text_only_non_square"),
    pytest.param(["a bowl of ramen"], dict(guidance=4.0), id="distilled_ignores_guidance"),
    pytest.param(["cat", "a watercolor painting of a lighthouse at dusk with seagulls"], dict(n=2, width=32, height=48),
                 id="batch_of_prompts_n2"),
    pytest.param(["the cat, in the style of the painting"], dict(images=[(72, 80)], width=64, height=48),
                 id="one_reference"),
    pytest.param(["put both together"], dict(images=[(64, 64), (96, 64)], width=48, height=80, steps=2),
                 id="two_references_non_square"),
    pytest.param(["东京的夜景 — Café crème 🐼"], dict(images=[(100, 70)], width=None, steps=2),
                 id="size_from_the_reference"),
    pytest.param(["an astronaut riding a horse " * 12], dict(max_sequence_length=512, width=32, height=32, steps=2),
                 id="full_512_text_positions"),
]
BASE_CASES = [
    pytest.param(["a bowl of ramen"], dict(guidance=4.0), id="cfg_empty_negative"),
    pytest.param(["a bowl of ramen", "a red fox"], dict(guidance=3.5, negative=["blurry", "watermark, text"],
                                                       width=48, height=32, n=2), id="cfg_with_negative_prompts"),
    pytest.param(["the cat again"], dict(guidance=2.5, negative=["low quality"], images=[(64, 96)], steps=2),
                 id="cfg_with_reference"),
    pytest.param(["a bowl of ramen"], dict(guidance=1.0), id="guidance_1_is_off"),
]


def with_images(options: dict) -> dict:
    """`images` given as sizes become reference images (seeded by position)."""
    options = dict(options)
    if "images" in options:
        options["images"] = [reference_image(w, h, seed=i) for i, (w, h) in enumerate(options["images"])]
    return options
