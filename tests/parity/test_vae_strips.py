"""Large images through the VAE in strips, in lockstep (ollimg/runtime/components/autoencoder_kl/tiles.py):
seamless, the whole-image computation's result, encoder and decoder, torch and MLX.

The stated bound, on the trained VAE of the built-in shapes model: decoding a generated image's
latents in strips differs from decoding them whole by at most 1 level of 255 anywhere (strip
borders included), and encoding in strips gives the whole encoding's moments within 1e-4 of their
largest magnitude. (Independent tiles with per-tile GroupNorm statistics, diffusers' tiled decode,
were up to 255 levels off on the same VAE: bench/README.md, "VAE tiling".) Against diffusers'
AutoencoderKL decoding and encoding whole, on the tiny random fixture VAE: the same bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from ollimg.builtin import builtin_models
from ollimg.runtime import load
from ollimg.runtime.components.autoencoder_kl.tiles import strips

SMALL_STRIPS = 1 << 18  # values per strip: a few rows each at these sizes, so every layer has many strips


def levels(x: torch.Tensor | np.ndarray) -> np.ndarray:
    x = torch.as_tensor(np.asarray(x)).float()
    return ((x / 2 + 0.5).clamp(0, 1) * 255).round().numpy()


def in_strips(module, tile: int = 8, strip: int = SMALL_STRIPS):
    """Context: `module` (a VaeDecoder or VaeEncoder) goes in strips above `tile` latent cells a side."""
    class Strips:
        def __enter__(self):
            self.saved = module.tile, module.strip
            module.tile, module.strip = tile, strip

        def __exit__(self, *exc):
            module.tile, module.strip = self.saved

    return Strips()


def test_strips_cover_the_rows_once():
    assert strips(10, 4, 2, elements=24) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert strips(5, 1000, 64, elements=10) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # at least a row
    assert strips(7, 2, 2, elements=1 << 20) == [(0, 7)]


@pytest.fixture(scope="module")
def shapes():
    """The built-in shapes model on torch fp32 and the latents of a generated 192x256 image."""
    pipe = load(str(builtin_models()["shapes"]), backend="torch", device="cpu", dtype="float32")
    latents = pipe.generate("three small white stars on a red background", width=256, height=192, seed=3).latents
    c = pipe.config.vae
    return pipe, torch.from_numpy(latents) / c.scaling_factor + c.shift_factor


def test_strip_decode_is_seamless_on_the_trained_vae(shapes):
    pipe, z = shapes
    vae = pipe.components.modules["vae"]
    with torch.inference_mode():
        whole = vae.decode(z)
        with in_strips(vae):
            striped = vae.decode(z)
    diff = np.abs(levels(whole) - levels(striped))
    assert diff.max() <= 1, f"strips differ from the whole decode by up to {diff.max()} levels"
    assert diff.mean() < 0.01


def test_strip_encode_matches_whole_on_the_trained_vae(shapes):
    pipe, z = shapes
    with torch.inference_mode():
        pixels = pipe.components.modules["vae"].decode(z).clamp(-1, 1)
        pipe.components.encode_image(pixels[:1, :, :16, :16].numpy())  # loads the encoder
        encoder = pipe.components.modules["vae_encoder"]
        whole = encoder.moments(pixels)
        with in_strips(encoder):
            striped = encoder.moments(pixels)
    assert (whole - striped).abs().max() <= 1e-4 * whole.abs().max()


def test_a_wrong_strip_border_fails_the_gate(shapes):
    """The gate can fail: a convolution that ignores its neighbours' rows leaves a seam."""
    import ollimg.runtime.components.autoencoder_kl.torch as vae_torch

    pipe, z = shapes
    vae = pipe.components.modules["vae"]
    real = vae_torch.halo
    vae_torch.halo = lambda start, end, height, rows=1: (start, end)
    try:
        with torch.inference_mode(), in_strips(vae):
            broken = vae.decode(z)
    finally:
        vae_torch.halo = real
    with torch.inference_mode():
        assert np.abs(levels(vae.decode(z)) - levels(broken)).max() > 8


@pytest.fixture(scope="module")
def tiny_vae(tiny_zimage_dir):
    pipe = load(tiny_zimage_dir, backend="torch", device="cpu", dtype="float32")
    pipe.components.encode_image(np.zeros((1, 3, 16, 16), np.float32))  # loads the encoder
    return pipe, AutoencoderKL.from_pretrained(tiny_zimage_dir / "vae").eval()


def test_strip_decode_matches_diffusers_whole_decode(tiny_vae):
    pipe, ref = tiny_vae
    vae = pipe.components.modules["vae"]
    z = torch.from_numpy(np.random.default_rng(5).standard_normal((1, ref.config.latent_channels, 24, 40),
                                                                     dtype=np.float32))
    with torch.inference_mode():
        expected = ref.decode(z).sample
        with in_strips(vae):
            striped = vae.decode(z)
    assert np.abs(levels(expected) - levels(striped)).max() <= 1


def test_channels_last_decode_matches_diffusers_whole_and_in_strips(tiny_vae):
    """The decoder in NHWC (as a GPU's load sets it) takes NCHW latents and gives what diffusers
    gives, decoding whole and in strips."""
    import copy

    pipe, ref = tiny_vae
    vae = copy.deepcopy(pipe.components.modules["vae"]).channels_last()
    assert vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    z = torch.from_numpy(np.random.default_rng(7).standard_normal((1, ref.config.latent_channels, 24, 40),
                                                                     dtype=np.float32))
    with torch.inference_mode():
        expected = levels(ref.decode(z).sample)
        whole = vae.decode(z)
        with in_strips(vae):
            striped = vae.decode(z)
    assert whole.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(expected - levels(whole)).max() <= 1
    assert np.abs(expected - levels(striped)).max() <= 1


def test_strip_encode_matches_diffusers_whole_encode(tiny_vae):
    pipe, ref = tiny_vae
    encoder = pipe.components.modules["vae_encoder"]
    x = torch.from_numpy(np.random.default_rng(6).uniform(-1, 1, (1, 3, 192, 320)).astype(np.float32))
    with torch.inference_mode():
        expected = ref.encode(x).latent_dist
        with in_strips(encoder):
            striped = encoder.moments(x)
    mean, logvar = striped.chunk(2, dim=1)
    assert (mean - expected.mean).abs().max() <= 1e-4 * expected.mean.abs().max()
    assert (logvar - expected.logvar).abs().max() <= 1e-4 * expected.logvar.abs().max()


@pytest.mark.mlx
def test_mlx_strips_match_whole_and_torch(shapes):
    """MLX decodes and encodes in strips as torch does (smaller: MLX's CPU convolutions are slow)."""
    mx = pytest.importorskip("mlx.core", reason="mlx is not installed: pip install 'mlx[cpu]' (Linux) or mlx (macOS)")
    torch_pipe, z = shapes
    z = z[:1, :, :8, :16]
    pipe = load(str(builtin_models()["shapes"]), backend="mlx", device="cpu", dtype="float32")
    vae = pipe.components.modules["vae"]
    whole = np.array(vae.decode(mx.array(z.numpy())))
    with in_strips(vae):
        striped = np.array(vae.decode(mx.array(z.numpy())))
    with torch.inference_mode(), in_strips(torch_pipe.components.modules["vae"]):
        torch_striped = torch_pipe.components.modules["vae"].decode(z).permute(0, 2, 3, 1)
    assert np.abs(levels(whole) - levels(striped)).max() <= 1
    assert np.abs(levels(torch_striped) - levels(striped)).max() <= 1

    pixels = mx.array(np.clip(whole, -1, 1))
    pipe.components.encode_image(np.zeros((1, 3, 16, 16), np.float32))  # loads the encoder
    encoder = pipe.components.modules["vae_encoder"]
    moments = np.array(encoder.moments(pixels))
    with in_strips(encoder):
        striped = np.array(encoder.moments(pixels))
    assert np.abs(moments - striped).max() <= 1e-4 * np.abs(moments).max()
