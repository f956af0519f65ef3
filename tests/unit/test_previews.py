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
    start = pipe.preview(pipe.backend.from_numpy(noise(3, 1, (16, 16, 16))))[0].astype(np.float32)  # the initial noise
    to_final, to_noise = np.abs(early - final).mean(), np.abs(early - start).mean()
    assert to_final < 0.2 * to_noise, (to_final, to_noise)


def test_the_flux_vae_previews_through_its_linear_map():
    from ollimg.runtime.models.zimage.pipeline import flux_vae_rgb

    rgb = flux_vae_rgb(np.zeros((2, 16, 4, 6), np.float32))
    assert rgb.shape == (2, 4, 6, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0, 0], np.round((np.array([-0.0329, -0.0718, -0.0851]) + 1) * 127.5))
