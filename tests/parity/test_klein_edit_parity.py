"""FLUX.2 klein inpainting against diffusers 0.42.1's Flux2KleinInpaintPipeline on the tiny fixture
models, both backends, fp32 and bf16, strength 0.3 and 0.8, with a mask and without one (a white
mask: the whole image redrawn), with an extra reference image, and with CFG on the base model.

diffusers draws its initial noise from a torch generator; the reference here is handed our seeded
numpy noise instead. Gates: fp32 final latents within 1e-4 of max|ref| and pixels within 1 level;
bf16 pixels within 8 levels of diffusers' fp32 run and latents within 5e-2. (diffusers' own bf16
run is no reference here: it keeps the inpainting latents in bf16 between steps and lands 0.14 of
max|latent| from its fp32 run, where ours lands 0.03.) The input image is 70x53, so both sides
round it down to 64x48 and resize it.
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from ollimg.errors import InvalidInput
from ollimg.runtime import load
from ollimg.runtime.models.flux2 import layout
from ollimg.runtime.noise import noise
from tests.parity.klein_reference import reference_image
from tests.parity.test_zimage_edit_parity import mask_image, source_image

SEED, STEPS, PROMPT = 11, 5, "a red barn in a wheat field"
BACKENDS = ["torch", pytest.param("mlx", marks=pytest.mark.mlx)]


def run_reference(path, dtype, monkeypatch, *, strength, mask, references=(), guidance=1.0):
    """(final packed latents float32 [1, C, h, w], pixels uint8) from diffusers, given our noise."""
    pipe = diffusers.Flux2KleinInpaintPipeline.from_pretrained(path, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    shape = (pipe.transformer.config.in_channels, 48 // 16, 64 // 16)
    start = torch.from_numpy(noise(SEED, 1, shape))
    module = __import__(type(pipe).__module__, fromlist=["randn_tensor"])
    monkeypatch.setattr(module, "randn_tensor", lambda s, **kw: start.to(kw["dtype"]))
    final = []

    def keep_last(p, step, t, kwargs):
        final.append(kwargs["latents"])
        return {}

    kwargs = dict(image=source_image(), mask_image=mask or Image.new("L", source_image().size, 255),
                  strength=strength, num_inference_steps=STEPS, guidance_scale=guidance, max_sequence_length=64,
                  callback_on_step_end=keep_last)
    if references:
        kwargs["image_reference"] = list(references)
    pixels = pipe(PROMPT, output_type="np", **kwargs).images
    packed = final[-1].float().numpy()  # (1, h * w, C)
    return packed.transpose(0, 2, 1).reshape(1, *shape), (pixels * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def pipes(tiny_klein_dir, tiny_klein_base_dir):
    cache = {}

    def get(backend, dtype, base=False):
        if (backend, dtype, base) not in cache:
            if backend == "mlx":
                pytest.importorskip("mlx.core", reason="mlx is not installed: pip install 'mlx[cpu]' (Linux) or mlx (macOS)")
            path = tiny_klein_base_dir if base else tiny_klein_dir
            cache[backend, dtype, base] = load(path, backend=backend, device="cpu", dtype=dtype)
        return cache[backend, dtype, base]

    return get


def check(result, ref_latents, ref_pixels, latent_rtol, levels):
    assert (result.width, result.height) == (64, 48)
    pixels = np.stack([np.asarray(im) for im in result.images])
    assert pixels.shape == ref_pixels.shape == (1, 48, 64, 3)
    latent_error = np.abs(result.latents - ref_latents).max() / np.abs(ref_latents).max()
    pixel_error = np.abs(pixels.astype(int) - ref_pixels).max()
    print(f"klein inpaint parity: latents within {latent_error:.2e}, pixels within {pixel_error} levels")
    assert latent_error <= latent_rtol
    assert pixel_error <= levels


REFERENCES: dict = {}  # (strength, masked) -> diffusers' fp32 result: every backend and dtype compares with it


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, levels, latent_rtol", [("float32", 1, 1e-4), ("bfloat16", 8, 5e-2)])
@pytest.mark.parametrize("masked", [False, True], ids=["whole", "masked"])
@pytest.mark.parametrize("strength", [0.3, 0.8])
def test_matches_diffusers(pipes, tiny_klein_dir, monkeypatch, backend, dtype, levels, latent_rtol, masked, strength):
    mask = mask_image() if masked else None
    if (strength, masked) not in REFERENCES:
        REFERENCES[strength, masked] = run_reference(tiny_klein_dir, torch.float32, monkeypatch, strength=strength,
                                                     mask=mask)
    ref = REFERENCES[strength, masked]
    result = pipes(backend, dtype).generate(PROMPT, images=[source_image()], mask=mask, strength=strength,
                                            steps=STEPS, seed=SEED, max_sequence_length=64)
    check(result, *ref, latent_rtol, levels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_with_a_reference_and_cfg_matches_diffusers(pipes, tiny_klein_base_dir, monkeypatch, backend):
    """The base model (CFG against the empty prompt) with an image_reference after the inpainted image."""
    reference = reference_image(64, 64, seed=4)
    ref = run_reference(tiny_klein_base_dir, torch.float32, monkeypatch, strength=0.8, mask=mask_image(),
                        references=[reference], guidance=4.0)
    result = pipes(backend, "float32", base=True).generate(
        PROMPT, images=[source_image(), reference], mask=mask_image(), strength=0.8, steps=STEPS, seed=SEED,
        guidance=4.0, max_sequence_length=64)
    check(result, *ref, 1e-4, 1)


def test_the_gate_can_fail(pipes, tiny_klein_dir, monkeypatch):
    """Nearest instead of bilinear mask cells (Z-Image's rule) is caught by the same comparison."""
    ref_latents, _ = run_reference(tiny_klein_dir, torch.float32, monkeypatch, strength=0.8, mask=mask_image())
    bilinear = layout.mask_cells
    monkeypatch.setattr(layout, "mask_cells", lambda binary, m: (bilinear(binary, m) >= 0.5).astype(np.float32))
    ours = pipes("torch", "float32").generate(PROMPT, images=[source_image()], mask=mask_image(), strength=0.8,
                                              steps=STEPS, seed=SEED, max_sequence_length=64)
    assert np.abs(ours.latents - ref_latents).max() / np.abs(ref_latents).max() > 1e-2


def test_mask_cells_are_the_bilinear_centre_means():
    binary = np.zeros((32, 48), np.float32)
    binary[7:9, 7:9] = 1  # the whole centre of cell (0, 0)
    binary[7, 23] = 1  # a quarter of the centre of cell (0, 1)
    cells = layout.mask_cells(binary, 16)
    expected = torch.nn.functional.interpolate(torch.from_numpy(binary)[None, None], size=(2, 3), mode="bilinear")
    assert np.array_equal(cells, expected.numpy())
    assert cells[0, 0, 0, :2].tolist() == [1.0, 0.25]


def test_inpainting_keeps_the_unmasked_area(pipes):
    """With nothing masked the result is the input's own latents whatever the prompt."""
    ours = pipes("torch", "float32")
    kwargs = dict(images=[source_image()], mask=Image.new("L", (70, 53), 0), strength=1.0, steps=3, seed=2)
    a, b = ours.generate(PROMPT, **kwargs), ours.generate("something else entirely", **kwargs)
    assert np.array_equal(a.latents, b.latents)
    assert a.strength == 1.0


def test_large_images_are_shrunk_and_sized(pipes):
    ours = pipes("torch", "float32")
    big = source_image().resize((1400, 1000))
    assert layout.within_area(big).size == (1211, 865)  # sqrt(1024 * 1024 / (1400 * 1000)), as diffusers
    result = ours.generate("a", images=[source_image()], strength=0.5, steps=2, seed=4, n=2, width=32, height=32)
    assert len(result.images) == 2 and {im.size for im in result.images} == {(32, 32)}


@pytest.mark.parametrize("kwargs, message", [
    (dict(strength=0.0), "invalid strength 0.0"),
    (dict(strength=1.5), "invalid strength 1.5"),
    (dict(strength=1e-17, steps=5), "leaves no step to run"),
    (dict(mask=Image.new("L", (64, 48))), "the mask is 64x48 but the image is 70x53"),
    (dict(images=None, strength=0.5), "mask and strength need an input image"),
    (dict(latents=np.zeros((1, 128, 3, 4), np.float32), strength=0.5), "latents cannot be combined"),
    (dict(images=[source_image()] * 9, strength=0.5), "at most 8 reference images, got 9"),
])
def test_bad_edit_arguments(pipes, kwargs, message):
    kwargs = {"images": [source_image()], **kwargs}
    with pytest.raises(InvalidInput, match=message):
        pipes("torch", "float32").generate(PROMPT, **kwargs)
