"""Starting from an image: what img2img and inpainting share across families, as diffusers 0.42.1's
img2img and inpaint pipelines do it (`VaeImageProcessor.preprocess`, `get_timesteps`,
`scale_noise`, the posterior sample of `retrieve_latents`, the inpainting blend).

    pixels()          an input image as the VAE takes it: RGB, resized (Lanczos) to the output size
    mask_pixels()     a mask as the reference takes it: grey, resized, binarised (1 redraws)
    mask_cells()      that mask per latent cell, the nearest pixel of each
    start()           the schedule cut by `strength` (the later steps only)
    posterior_noise() the seeded noise of the VAE posterior's sample (its own stream, not the initial noise's)
    keep_known()      the inpainting blend after each step: the kept area back at the next step's noise level

Backend-neutral numpy; imports no torch or mlx and names no family.
"""

from __future__ import annotations

import numpy as np

from ollimg.errors import InvalidInput


def check_strength(strength) -> float:
    """`strength` as a float in (0, 1]; 1 ignores the image (in the masked area, for inpainting)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise InvalidInput(f"invalid strength {strength!r}: use a number above 0 and at most 1 "
                           "(how much of the image is redrawn)")
    return float(strength)


def output_size(image, width: int | None, height: int | None, multiple: int) -> tuple[int, int]:
    """(width, height): the given ones, else the image's rounded down to `multiple` (as diffusers)."""
    w = image.width - image.width % multiple if width is None else width
    h = image.height - image.height % multiple if height is None else height
    return w, h


def _resized(image, width: int, height: int):
    from PIL import Image

    # VaeImageProcessor.resize: PIL Lanczos, reducing_gap None, even when the size is unchanged.
    return image.resize((width, height), resample=Image.Resampling.LANCZOS, reducing_gap=None)


def pixels(image, width: int, height: int) -> np.ndarray:
    """float32 [1, 3, height, width] in [-1, 1] of a PIL image (converted to RGB first)."""
    rgb = _resized(image.convert("RGB") if image.mode != "RGB" else image, width, height)
    array = np.asarray(rgb).astype(np.float32) / 255.0
    return (2.0 * array - 1.0).transpose(2, 0, 1)[None]


def mask_pixels(mask, width: int, height: int) -> np.ndarray:
    """float32 [height, width] of 0 (keep) and 1 (redraw) from a PIL mask (white redraws): greyscale,
    resized like the image, binarised at 0.5."""
    grey = np.asarray(_resized(mask.convert("L") if mask.mode != "L" else mask, width, height)).astype(np.float32)
    return (grey / 255.0 >= 0.5).astype(np.float32)


def mask_cells(mask, width: int, height: int, scale: int) -> np.ndarray:
    """float32 [1, 1, height/scale, width/scale] of 0 (keep) and 1 (redraw): `mask_pixels`, then the
    nearest pixel of each latent cell (torch's `interpolate(mode="nearest")`)."""
    binary = mask_pixels(mask, width, height)
    h, w = height // scale, width // scale
    rows = np.minimum(np.floor(np.arange(h, dtype=np.float32) * np.float32(height / h)).astype(int), height - 1)
    cols = np.minimum(np.floor(np.arange(w, dtype=np.float32) * np.float32(width / w)).astype(int), width - 1)
    return binary[rows][:, cols][None, None]


def start(steps: int, strength: float) -> int:
    """The index of the first step run (diffusers' `get_timesteps`): the last steps * strength of them."""
    init = min(steps * strength, steps)
    first = int(max(steps - init, 0))
    if steps - first < 1:
        raise InvalidInput(f"strength {strength} with {steps} steps leaves no step to run: raise strength or steps")
    return first


def posterior_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 [1, *shape]: the VAE posterior sample's noise for an input image, from its own
    stream of `seed` (so it never repeats the initial noise of image `seed`)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(1,))))
    return rng.standard_normal(shape, dtype=np.float32)[None]


def sample_posterior(moments: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """mean + std * eps of AutoencoderKL's diagonal Gaussian (moments: mean and log-variance along axis 1)."""
    mean, logvar = np.split(moments.astype(np.float32), 2, axis=1)
    std = np.exp(np.float32(0.5) * np.clip(logvar, -30.0, 20.0))
    return mean + std * eps


def scale_noise(sample, noise, sigma: float):
    """The flow-matching forward process at `sigma`: sigma * noise + (1 - sigma) * sample (any arrays)."""
    sigma = np.float32(sigma)
    return float(sigma) * noise + float(np.float32(1.0) - sigma) * sample


def keep_known(backend, image: np.ndarray, noise: np.ndarray, cells: np.ndarray, sigmas: np.ndarray):
    """`after_step(x, i)` for the Euler loop when inpainting: where `cells` is 0 the image's latents
    (`image`, float32 like x) noised to the next step's sigma with the initial `noise`, and after the
    last step the latents themselves; where it is 1 the loop's own (values between blend)."""
    keep_image, keep_noise = backend.from_numpy(image), backend.from_numpy(noise)
    redraw, keep = backend.from_numpy(cells), backend.from_numpy(1 - cells)
    last = len(sigmas) - 2

    def blend(x, i: int):
        kept = scale_noise(keep_image, keep_noise, sigmas[i + 1]) if i < last else keep_image
        return keep * kept + redraw * x

    return blend
