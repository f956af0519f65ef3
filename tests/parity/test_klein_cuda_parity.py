"""FLUX.2 klein on CUDA against diffusers on the same GPU: fp32, bf16 (distilled and base, with
reference images), and an fp8 model against its own dequantized weights, dequantized per call and
multiplied in fp8. CI has no GPU, so these run only on a CUDA machine (the project's lent GPU
machine); elsewhere they are skipped, and say why. Z-Image's are in test_cuda_parity.py.
"""

from __future__ import annotations

import pytest
import torch

from ollimg.runtime import load
from tests.parity.klein_reference import compare, reference_pipe, with_images

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_float32_on_cuda(tiny_klein_dir, tiny_klein_base_dir):
    ours = load(tiny_klein_dir, backend="torch", device="cuda", dtype="float32")
    images = with_images({"images": [(64, 64), (96, 64)]})["images"]
    compare(ours, reference_pipe(tiny_klein_dir, torch.float32, device="cuda"), ["a lighthouse", "a red bicycle"],
            images=images, width=64, height=48)
    base = load(tiny_klein_base_dir, backend="torch", device="cuda", dtype="float32")
    compare(base, reference_pipe(tiny_klein_base_dir, torch.float32, device="cuda"), ["a fox"], guidance=4.0,
            negative=["blurry"], width=48, height=48)


def test_bfloat16_on_cuda(tiny_klein_dir, tiny_klein_base_dir):
    ours = load(tiny_klein_dir, backend="torch", device="cuda", dtype="bfloat16")
    assert ours.generate("x", width=16, height=16, steps=1, max_sequence_length=8).images  # default-dtype path runs
    images = with_images({"images": [(64, 80)]})["images"]
    compare(ours, reference_pipe(tiny_klein_dir, torch.bfloat16, device="cuda"), ["a portrait of an old fisherman"],
            images=images, width=48, height=64, latent_rtol=5e-2, levels=8)
    base = load(tiny_klein_base_dir, backend="torch", device="cuda", dtype="bfloat16")
    compare(base, reference_pipe(tiny_klein_base_dir, torch.bfloat16, device="cuda"), ["a fox"], guidance=4.0,
            negative=["blurry"], latent_rtol=5e-2, levels=8, width=32, height=48)


@pytest.mark.parametrize("dtype, rtol, levels", [("float32", 1e-4, 1), ("bfloat16", 5e-2, 8)])
def test_fp8_model_on_cuda_against_its_dequantized_weights(tiny_klein_dir, store_dir, dtype, rtol, levels, monkeypatch):
    """Weights dequantized per call (OLLIMG_FP8_MATMUL=off; float32 compute never multiplies in fp8)."""
    from ollimg.runtime.torch_backend import fp8_matmul
    from tests.parity.test_klein_torch_parity import fp8_reference

    monkeypatch.setenv("OLLIMG_FP8_MATMUL", "off")
    fp8_matmul.cache_clear()
    try:
        ref = fp8_reference(tiny_klein_dir, store_dir, dtype=getattr(torch, dtype), device="cuda")
        ours = load("klein:fp8", backend="torch", device="cuda", dtype=dtype, models_dir=store_dir)
        compare(ours, ref, ["a cat on the moon"], width=48, height=48, latent_rtol=rtol, levels=levels)
    finally:
        fp8_matmul.cache_clear()


def test_fp8_matmul_on_cuda(tiny_klein_dir, store_dir, monkeypatch):
    """On fp8 tensor cores (compute capability 8.9+) the fp8 klein model in bf16 multiplies in fp8.
    Bound against diffusers with the dequantized weights: latents within 8e-2 of their largest
    value, pixels within 16 levels (Z-Image's bound on the same kind of tiny random model)."""
    from ollimg.runtime import torch_backend
    from tests.parity.test_klein_torch_parity import fp8_reference

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.fail("this GPU has no fp8 tensor cores; run the CUDA tests on the project's H100 or H200")
    calls = []
    real = torch_backend.scaled_linear
    monkeypatch.setattr(torch_backend, "scaled_linear", lambda *a: calls.append(1) or real(*a))
    torch_backend.fp8_matmul.cache_clear()
    ref = fp8_reference(tiny_klein_dir, store_dir, dtype=torch.bfloat16, device="cuda")
    ours = load("klein:fp8", backend="torch", device="cuda", dtype="bfloat16", models_dir=store_dir)
    compare(ours, ref, ["a cat on the moon"], width=48, height=48, latent_rtol=8e-2, levels=16)
    assert calls  # the fp8 kernel ran
