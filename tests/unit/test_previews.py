"""Live previews show the model's guess of the clean image (x - sigma * v), not the noisy latents."""

from __future__ import annotations

import numpy as np

from ollimg.builtin import builtin_models
from ollimg.runtime import load
from ollimg.runtime.noise import noise


def test_the_preview_at_step_2_of_8_is_closer_to_the_final_image_than_to_the_noise():
    pipe = load(builtin_models()["shapes"], backend="torch", device="cpu")
    previews = {}
    prompt = "a large red circle at the top left on a blue background"
    result = pipe.generate(prompt, seed=3, steps=8, previews=3, on_preview=lambda step, rgb: previews.update({step: rgb}))
    assert sorted(previews) == [2, 4, 6]
    early = previews[2][0].astype(np.float32)  # (128, 128, 3): the built-in VAE decodes previews
    final = np.asarray(result.images[0], dtype=np.float32)
    cells = 128 // pipe.config.vae.scale  # the latent grid of a 128x128 image
    start = pipe.preview(pipe.backend.from_numpy(noise(3, 1, (16, cells, cells))))[0].astype(np.float32)  # the initial noise
    to_final, to_noise = np.abs(early - final).mean(), np.abs(early - start).mean()
    assert to_final < 0.2 * to_noise, (to_final, to_noise)


def test_the_flux_vae_previews_through_its_linear_map():
    from ollimg.runtime.models.zimage.pipeline import flux_vae_rgb

    rgb = flux_vae_rgb(np.zeros((2, 16, 4, 6), np.float32))
    assert rgb.shape == (2, 4, 6, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0, 0], np.round((np.array([-0.0329, -0.0718, -0.0851]) + 1) * 127.5))


def test_previews_made_per_latent_cell_come_at_the_image_size(tiny_zimage_dir):
    """The FLUX.1 VAE's preview is one pixel per latent cell (6x4 for 48x32); `on_preview` gets it
    scaled to the image's size, the size every preview has whichever way it was made; each preview comes once."""
    pipe = load(str(tiny_zimage_dir), backend="torch", device="cpu")
    assert pipe.flux_vae
    frames = []
    result = pipe.generate("x", width=48, height=32, steps=2, seed=1, n=2, previews=1,
                           on_preview=lambda step, rgb: frames.append((step, rgb)))
    assert [(step, f.shape, f.dtype) for step, f in frames] == [(1, (2, 32, 48, 3), np.uint8)]
    assert result.images[0].size == (48, 32)
