"""Z-Image img2img and inpainting against diffusers 0.42.1's ZImageImg2ImgPipeline and
ZImageInpaintPipeline on the tiny fixture model, both backends, fp32 and bf16.

diffusers draws its noise from a torch generator; the reference here is handed our seeded numpy
noise instead (the VAE posterior's sample and the initial noise), so both start from the same
numbers. Gates: fp32 final latents within 1e-4 of max|ref| and pixels within 1 level; bf16 pixels
within 8 levels. The input image is 70x53, so both sides round it down to 64x48 and resize it.
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from ollimg.builtin import builtin_models
from ollimg.errors import InvalidInput
from ollimg.runtime import img2img, load
from ollimg.runtime.noise import noise

SEED, STEPS, PROMPT = 11, 5, "a red barn in a wheat field"
BACKENDS = ["torch", pytest.param("mlx", marks=pytest.mark.mlx)]


def source_image() -> Image.Image:
    """A smooth colour pattern with some edges, 70x53 (not a multiple of 16)."""
    y, x = np.mgrid[0:53, 0:70].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(x / 7), 128 + 100 * np.cos(y / 5), (x + y) * 2 % 256], axis=-1)
    rgb[10:30, 20:40] = [250, 20, 30]
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def mask_image() -> Image.Image:
    """White (redraw) over a rectangle whose edges fall inside latent cells, black elsewhere."""
    mask = np.zeros((53, 70), np.uint8)
    mask[13:41, 25:61] = 255
    return Image.fromarray(mask, "L")


def run_reference(path, dtype, monkeypatch, *, strength, mask=None, cell=8):
    """(final latents float32, pixels uint8) from diffusers, given our noise; `cell`: the VAE's
    pixels per latent cell."""
    cls = diffusers.ZImageInpaintPipeline if mask is not None else diffusers.ZImageImg2ImgPipeline
    pipe = cls.from_pretrained(path, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    shape = (16, 48 // cell, 64 // cell)
    eps = torch.from_numpy(img2img.posterior_noise(SEED, shape))
    start = torch.from_numpy(noise(SEED, 1, shape))
    module = __import__(cls.__module__, fromlist=["randn_tensor"])
    monkeypatch.setattr("diffusers.models.autoencoders.vae.randn_tensor", lambda s, **kw: eps.to(kw["dtype"]))
    monkeypatch.setattr(module, "randn_tensor", lambda s, **kw: start.to(kw["dtype"]))
    kwargs = dict(image=source_image(), strength=strength, num_inference_steps=STEPS, guidance_scale=0.0)
    if mask is not None:
        kwargs["mask_image"] = mask
    final = pipe(PROMPT, output_type="latent", **kwargs).images
    pixels = pipe(PROMPT, output_type="np", **kwargs).images
    return final.float().numpy(), (pixels * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def pipes(tiny_zimage_dir):
    cache = {}

    def get(backend, dtype):
        if (backend, dtype) not in cache:
            if backend == "mlx":
                pytest.importorskip("mlx.core", reason="mlx is not installed: pip install 'mlx[cpu]' (Linux) or mlx (macOS)")
            cache[backend, dtype] = load(tiny_zimage_dir, backend=backend, device="cpu", dtype=dtype)
        return cache[backend, dtype]

    return get


@pytest.mark.parametrize("backend", BACKENDS)
def test_inpainting_matches_diffusers_with_a_4x_vae(monkeypatch, backend):
    """The shipped shapes model's VAE has 4 pixels per latent cell (the fixture's: 8), so the mask
    goes onto a 16x12 latent grid here; fp32 gates as below."""
    path = builtin_models()["shapes"]
    ref_latents, ref_pixels = run_reference(path, torch.float32, monkeypatch, strength=0.8, mask=mask_image(), cell=4)
    if backend == "mlx":
        pytest.importorskip("mlx.core", reason="mlx is not installed: pip install 'mlx[cpu]' (Linux) or mlx (macOS)")
    result = load(path, backend=backend, device="cpu", dtype="float32").generate(
        PROMPT, images=[source_image()], mask=mask_image(), strength=0.8, steps=STEPS, guidance=0.0, seed=SEED)
    assert result.latents.shape == ref_latents.shape == (1, 16, 12, 16)
    pixels = np.stack([np.asarray(im) for im in result.images])
    assert np.abs(result.latents - ref_latents).max() <= 1e-4 * np.abs(ref_latents).max()
    assert np.abs(pixels.astype(int) - ref_pixels).max() <= 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, levels, latent_rtol", [("float32", 1, 1e-4), ("bfloat16", 8, 3e-2)])
@pytest.mark.parametrize("masked", [False, True], ids=["img2img", "inpaint"])
@pytest.mark.parametrize("strength", [0.3, 0.8])
def test_matches_diffusers(pipes, tiny_zimage_dir, monkeypatch, backend, dtype, levels, latent_rtol, masked, strength):
    mask = mask_image() if masked else None
    ref_latents, ref_pixels = run_reference(tiny_zimage_dir, getattr(torch, dtype), monkeypatch, strength=strength,
                                            mask=mask)
    result = pipes(backend, dtype).generate(PROMPT, images=[source_image()], mask=mask, strength=strength,
                                            steps=STEPS, guidance=0.0, seed=SEED)
    assert (result.width, result.height) == (64, 48)
    pixels = np.stack([np.asarray(im) for im in result.images])
    assert pixels.shape == ref_pixels.shape == (1, 48, 64, 3)
    latent_error = np.abs(result.latents - ref_latents).max() / np.abs(ref_latents).max()
    pixel_error = np.abs(pixels.astype(int) - ref_pixels).max()
    print(f"edit parity: latents within {latent_error:.2e}, pixels within {pixel_error} levels")
    assert latent_error <= latent_rtol
    assert pixel_error <= levels


def test_the_gate_can_fail(pipes, tiny_zimage_dir, monkeypatch):
    """A wrong strength cut (one more step) is caught by the same comparison."""
    ref_latents, _ = run_reference(tiny_zimage_dir, torch.float32, monkeypatch, strength=0.8, mask=mask_image())
    ours = pipes("torch", "float32").generate(PROMPT, images=[source_image()], mask=mask_image(), strength=1.0,
                                              steps=STEPS, guidance=0.0, seed=SEED)
    assert np.abs(ours.latents - ref_latents).max() / np.abs(ref_latents).max() > 1e-2


def test_inpainting_keeps_the_unmasked_area(pipes):
    """With nothing masked the result is the input's own latents whatever the prompt."""
    ours = pipes("torch", "float32")
    full = ours.generate(PROMPT, images=[source_image()], mask=Image.new("L", (70, 53), 0), strength=1.0, steps=3,
                         seed=2)
    again = ours.generate("something else entirely", images=[source_image()], mask=Image.new("L", (70, 53), 0),
                          strength=1.0, steps=3, seed=2)
    assert np.array_equal(np.asarray(full.images[0]), np.asarray(again.images[0]))


def test_output_size_and_batch(pipes):
    ours = pipes("torch", "float32")
    result = ours.generate(["a", "b"], images=[source_image()], strength=0.5, steps=2, seed=4, n=2)
    assert len(result.images) == 4 and result.seeds == [4, 5, 6, 7]
    assert {im.size for im in result.images} == {(64, 48)}
    sized = ours.generate("a", images=[source_image()], width=32, height=32, strength=0.5, steps=2, seed=4)
    assert sized.images[0].size == (32, 32)


@pytest.mark.parametrize("kwargs, message", [
    (dict(strength=0.0), "invalid strength 0.0"),
    (dict(strength=1.5), "invalid strength 1.5"),
    (dict(strength="0.5"), "invalid strength '0.5'"),
    (dict(strength=1e-17, steps=5), "leaves no step to run"),
    (dict(mask=Image.new("L", (64, 48))), "the mask is 64x48 but the image is 70x53"),
    (dict(images=[source_image(), source_image()]), "edits one image at a time"),
    (dict(images=None, strength=0.5), "mask and strength need an input image"),
    (dict(latents=np.zeros((1, 16, 6, 8), np.float32)), "latents cannot be combined"),
])
def test_bad_edit_arguments(pipes, kwargs, message):
    kwargs = {"images": [source_image()], **kwargs}
    with pytest.raises(InvalidInput, match=message):
        pipes("torch", "float32").generate(PROMPT, **kwargs)


def test_a_model_without_encoder_cannot_edit(pipes):
    ours = pipes("torch", "float32")
    encode, ours.components.encode_image = ours.components.encode_image, None
    try:
        with pytest.raises(InvalidInput, match="cannot edit images: it has no VAE encoder"):
            ours.generate(PROMPT, images=[source_image()])
    finally:
        ours.components.encode_image = encode
