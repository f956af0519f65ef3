"""The MLX FLUX.2 klein pipeline against diffusers' Flux2KleinPipeline (and against our torch
backend) on the tiny fixture models, with the same initial latents.

Gates: fp32 final latents within 1e-4 of max|ref| and pixels within 1 level; bf16 pixels within
8 levels. Skipped only when mlx cannot be imported (install `mlx[cpu]` on Linux, `mlx` on macOS).
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed: pip install 'mlx[cpu]' (Linux) or mlx (macOS)")
import torch  # noqa: E402

from ollimg.runtime import load  # noqa: E402
from tests.parity.klein_reference import BASE_CASES, CASES, compare, reference_pipe, with_images  # noqa: E402

pytestmark = pytest.mark.mlx

# A subset of the torch cases (the arithmetic is pinned per component in test_klein_components.py):
# text-only square and non-square, one and two references, the base model's CFG.
MLX_CASES = [c for c in CASES if c.id in ("text_only_square", "text_only_non_square", "one_reference",
                                          "two_references_non_square")]
MLX_BASE_CASES = [c for c in BASE_CASES if c.id in ("cfg_with_negative_prompts", "cfg_with_reference")]


@pytest.fixture(scope="module")
def ours(tiny_klein_dir):
    return load(tiny_klein_dir, backend="mlx", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference(tiny_klein_dir):
    return reference_pipe(tiny_klein_dir, torch.float32)


@pytest.mark.parametrize("prompts, options", MLX_CASES)
def test_distilled_matches_diffusers(ours, reference, prompts, options):
    compare(ours, reference, prompts, **with_images(options))


@pytest.mark.parametrize("prompts, options", MLX_BASE_CASES)
def test_base_matches_diffusers(tiny_klein_base_dir, prompts, options):
    base = load(tiny_klein_base_dir, backend="mlx", device="cpu", dtype="float32")
    compare(base, reference_pipe(tiny_klein_base_dir, torch.float32), prompts, **with_images(options))


def test_the_gate_can_fail(ours, reference):
    """A skipped BatchNorm statistic (the mean left at zero) is caught."""
    norm = ours.components.modules["latent_norm"]
    saved = norm.mean
    try:
        norm.mean = mx.zeros_like(saved)
        with pytest.raises(AssertionError):
            compare(ours, reference, ["a cat"], width=32, height=32, steps=2)
    finally:
        norm.mean = saved


def test_bfloat16(tiny_klein_dir):
    ours16 = load(tiny_klein_dir, backend="mlx", device="cpu", dtype="bfloat16")
    ref16 = reference_pipe(tiny_klein_dir, torch.bfloat16)
    images = with_images({"images": [(64, 80)]})["images"]
    compare(ours16, ref16, ["a portrait of an old fisherman"], images=images, width=48, height=64, latent_rtol=5e-2,
            levels=8)


@pytest.mark.parametrize("dtype, levels", [("float32", 1), ("bfloat16", 8)])
def test_same_seed_same_image_as_the_torch_backend(ours, tiny_klein_base_dir, tiny_klein_dir, dtype, levels):
    from tests.parity.klein_reference import reference_image

    for path in (tiny_klein_dir, tiny_klein_base_dir):
        mlx_pipe = ours if (dtype, path) == ("float32", tiny_klein_dir) else load(path, backend="mlx", device="cpu",
                                                                                  dtype=dtype)
        torch_pipe = load(path, backend="torch", device="cpu", dtype=dtype)
        kwargs = dict(negative_prompt="blurry", guidance=2.5, width=48, height=32, steps=3, seed=1234,
                      images=[reference_image(64, 64)], max_sequence_length=32)
        a = mlx_pipe.generate("a red fox in the snow", **kwargs)
        b = torch_pipe.generate("a red fox in the snow", **kwargs)
        assert a.seed == b.seed == 1234
        diff = np.abs(np.asarray(a.images[0]).astype(int) - np.asarray(b.images[0]).astype(int))
        assert diff.max() <= levels, (path.name, diff.max())
