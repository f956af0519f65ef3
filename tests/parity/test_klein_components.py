"""FLUX.2 klein components (torch and MLX) against diffusers' own modules on the tiny fixture.

The reference is diffusers' Flux2Transformer2DModel loaded from the fixture directory and fed
the position ids diffusers' Flux2KleinPipeline helpers make, so our numpy layout is checked too.
Gate: fp32 outputs within 1e-4 of the reference's largest magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ollimg.runtime.models.flux2 import layout, weights
from ollimg.runtime.models.flux2.config import TransformerConfig
from tests.parity.klein_reference import reference_image


def close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> float:
    """Max abs error relative to the reference's largest magnitude; asserts it is within `rtol`."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = float(np.abs(actual - expected).max() / np.abs(expected).max())
    print(f"component parity: {err:.2e}")
    assert err <= rtol, f"max error {err:.3g} of the largest value (bound {rtol})"
    return err


@pytest.fixture(scope="module")
def reference(tiny_klein_dir):
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel.from_pretrained(tiny_klein_dir / "transformer", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def config(tiny_klein_dir) -> TransformerConfig:
    import json

    return TransformerConfig.from_json(json.loads((tiny_klein_dir / "transformer" / "config.json").read_text()))


@pytest.fixture(scope="module")
def tensors(tiny_klein_dir):
    from ollimg.runtime.models.flux2.config import read_config
    from ollimg.runtime.source import ModelSource

    source = ModelSource.from_dir(tiny_klein_dir)
    return weights.component_tensors(source, read_config(source))


@pytest.fixture(scope="module")
def ours_torch(tensors, config):
    from ollimg.runtime.models.flux2.torch.transformer import Flux2Transformer
    from ollimg.runtime.torch_backend import TorchBackend, assign

    backend = TorchBackend(device="cpu", dtype="float32")
    with torch.device("meta"):
        module = Flux2Transformer(config)
    return assign(module, backend.load_tensors(tensors["transformer"]), "transformer").eval()


# (batch, packed latent grid h x w, reference grids, text length)
CASES = [
    pytest.param(1, (4, 4), [], 12, id="text_only_square"),
    pytest.param(2, (3, 5), [], 9, id="text_only_non_square_batch"),
    pytest.param(1, (4, 4), [(4, 4)], 10, id="one_reference"),
    pytest.param(2, (2, 6), [(4, 3), (5, 4)], 7, id="two_references_non_square"),
]


def inputs(config, batch, grid, refs, text_len, seed=0):
    rng = np.random.default_rng(seed)
    C = config.in_channels
    x = rng.standard_normal((batch, C, *grid), dtype=np.float32)
    text = rng.standard_normal((batch, text_len, config.joint_attention_dim), dtype=np.float32)
    ref_tokens = np.concatenate([rng.standard_normal((h * w, C), dtype=np.float32) for h, w in refs]) if refs else None
    t = np.array([0.83, 0.41][:batch], np.float32)
    return x, text, ref_tokens, t


def run_reference(reference, x, text, ref_tokens, refs, t):
    from diffusers import Flux2KleinPipeline as P

    B, C, h, w = x.shape
    latents = torch.from_numpy(x)
    img_ids = P._prepare_latent_ids(latents)
    hidden = P._pack_latents(latents)
    if ref_tokens is not None:
        ref_latents = [torch.zeros(1, C, rh, rw) for rh, rw in refs]
        img_ids = torch.cat([img_ids, P._prepare_image_ids(ref_latents).repeat(B, 1, 1)], dim=1)
        hidden = torch.cat([hidden, torch.from_numpy(ref_tokens)[None].repeat(B, 1, 1)], dim=1)
    text = torch.from_numpy(text)
    with torch.no_grad():
        out = reference(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.from_numpy(t),
                        img_ids=img_ids, txt_ids=P._prepare_text_ids(text), guidance=None, return_dict=False)[0]
    out = out[:, : h * w]  # (B, n, C) -> (B, C, h, w)
    return out.transpose(1, 2).reshape(B, C, h, w).numpy()


def test_layout_ids_equal_diffusers():
    from diffusers import Flux2KleinPipeline as P

    text = torch.zeros(1, 7, 3)
    np.testing.assert_array_equal(layout.text_ids(7), P._prepare_text_ids(text)[0].numpy())
    np.testing.assert_array_equal(layout.grid_ids(3, 5), P._prepare_latent_ids(torch.zeros(1, 2, 3, 5))[0].numpy())
    refs = [(4, 3), (2, 5)]
    expected = P._prepare_image_ids([torch.zeros(1, 2, h, w) for h, w in refs])[0].numpy()
    np.testing.assert_array_equal(layout.reference_ids(refs), expected)


def test_rope_equals_diffusers(config, reference):
    ids = np.concatenate([layout.text_ids(5), layout.grid_ids(3, 4), layout.reference_ids([(2, 2)])])
    cos, sin = layout.rope(ids, config.axes_dims_rope, config.rope_theta)
    ref_cos, ref_sin = reference.pos_embed(torch.from_numpy(ids))
    np.testing.assert_array_equal(np.repeat(cos, 2, axis=1), ref_cos.numpy())
    np.testing.assert_array_equal(np.repeat(sin, 2, axis=1), ref_sin.numpy())


def test_empirical_mu_equals_diffusers():
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    for seq_len, steps in [(16, 4), (4096, 4), (4096, 50), (4300, 28), (4301, 4), (16384, 50)]:
        assert layout.empirical_mu(seq_len, steps) == compute_empirical_mu(seq_len, steps)


@pytest.mark.parametrize("batch, grid, refs, text_len", CASES)
def test_torch_transformer_matches_diffusers(ours_torch, reference, config, batch, grid, refs, text_len):
    x, text, ref_tokens, t = inputs(config, batch, grid, refs, text_len)
    expected = run_reference(reference, x, text, ref_tokens, refs, t)
    with torch.inference_mode():
        ctx = ours_torch.prepare(torch.from_numpy(text), None if ref_tokens is None else torch.from_numpy(ref_tokens),
                                 refs, *grid)
        out = ours_torch(torch.from_numpy(x), t, ctx).numpy()
    close(out, expected)


def test_torch_transformer_gate_can_fail(ours_torch, reference, config):
    """A reference token with the wrong position id (image 2's time coordinate for image 1) is caught."""
    refs = [(4, 4), (4, 4)]
    x, text, ref_tokens, t = inputs(config, 1, (4, 4), refs, 6)
    expected = run_reference(reference, x, text, ref_tokens, refs, t)
    swapped = np.concatenate([ref_tokens[16:], ref_tokens[:16]])
    with torch.inference_mode():
        ctx = ours_torch.prepare(torch.from_numpy(text), torch.from_numpy(swapped), refs, 4, 4)
        out = ours_torch(torch.from_numpy(x), t, ctx).numpy()
    with pytest.raises(AssertionError):
        close(out, expected)


@pytest.fixture(scope="module")
def ours_mlx(tensors, config):
    pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'mlx[cpu]' on Linux)")
    from ollimg.runtime.mlx_backend import MlxBackend
    from ollimg.runtime.models.flux2.mlx.transformer import Flux2Transformer

    backend = MlxBackend(device="cpu", dtype="float32")
    module = Flux2Transformer(config)
    module.load_weights(list(backend.load_tensors(tensors["transformer"]).items()), strict=True)
    return module


@pytest.mark.mlx
@pytest.mark.parametrize("batch, grid, refs, text_len", CASES)
def test_mlx_transformer_matches_diffusers(ours_mlx, reference, config, batch, grid, refs, text_len):
    import mlx.core as mx

    x, text, ref_tokens, t = inputs(config, batch, grid, refs, text_len)
    expected = run_reference(reference, x, text, ref_tokens, refs, t)
    ctx = ours_mlx.prepare(mx.array(text), None if ref_tokens is None else mx.array(ref_tokens), refs, *grid)
    close(np.array(ours_mlx(mx.array(x), t, ctx)), expected)


@pytest.fixture(scope="module")
def reference_vae(tiny_klein_dir):
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2.from_pretrained(tiny_klein_dir / "vae", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def klein_config(tiny_klein_dir):
    from ollimg.runtime.models.flux2.config import read_config
    from ollimg.runtime.source import ModelSource

    return read_config(ModelSource.from_dir(tiny_klein_dir))


def test_reference_pixels_equal_diffusers_preprocessing():
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

    processor = Flux2ImageProcessor(vae_scale_factor=16)
    for size in [(72, 80), (64, 64), (1100, 1000), (250, 97)]:
        image = reference_image(*size)
        if size[0] * size[1] > 1024 * 1024:
            image_ref = processor._resize_to_target_area(image, 1024 * 1024)
        else:
            image_ref = image
        w, h = image_ref.size[0] // 16 * 16, image_ref.size[1] // 16 * 16
        expected = processor.preprocess(image_ref, height=h, width=w, resize_mode="crop")[0].numpy()
        np.testing.assert_array_equal(layout.reference_pixels(image, 16), expected)


@pytest.mark.parametrize("bad, message", [((63, 200), "too small"), ((600, 70), "too elongated")])
def test_bad_reference_images_are_refused(bad, message):
    from ollimg.errors import InvalidInput

    with pytest.raises(InvalidInput, match=message):
        layout.reference_pixels(reference_image(*bad), 16)
    with pytest.raises(InvalidInput, match="must be an image"):
        layout.reference_pixels(np.zeros((64, 64, 3)), 16)


def test_torch_vae_encoder_and_latent_norm_match_diffusers(tensors, reference_vae, klein_config):
    from diffusers import Flux2KleinPipeline as P

    from ollimg.runtime.components.autoencoder_kl.torch import VaeEncoder
    from ollimg.runtime.models.flux2.torch.vae import LatentNorm, patchify, unpatchify
    from ollimg.runtime.torch_backend import TorchBackend, load_module

    backend = TorchBackend(device="cpu", dtype="float32")
    encoder = load_module(backend, VaeEncoder, (klein_config.vae,), tensors["vae_encoder"], "vae")
    stats = backend.load_tensors(tensors["latent_norm"])
    norm = LatentNorm(stats["bn.running_mean"], stats["bn.running_var"], klein_config.latent_norm.batch_norm_eps)

    pixels = torch.from_numpy(layout.reference_pixels(reference_image(96, 64), 16))[None]
    pipe = P.__new__(P)  # only `vae` is needed by _encode_vae_image
    pipe.vae = reference_vae
    with torch.no_grad():
        expected = pipe._encode_vae_image(pixels, generator=None).numpy()
        ours = norm.normalize(patchify(encoder(pixels))).numpy()
    close(ours, expected)
    z = torch.from_numpy(expected)
    np.testing.assert_array_equal(patchify(unpatchify(z)).numpy(), expected)
    np.testing.assert_array_equal(unpatchify(z).numpy(), P._unpatchify_latents(z).numpy())


@pytest.mark.mlx
def test_mlx_vae_encoder_and_latent_norm_match_diffusers(tensors, reference_vae, klein_config):
    mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'mlx[cpu]' on Linux)")
    from diffusers import Flux2KleinPipeline as P

    from ollimg.runtime.components.autoencoder_kl.mlx import VaeEncoder, mlx_layout
    from ollimg.runtime.mlx_backend import MlxBackend, load_module
    from ollimg.runtime.models.flux2.mlx.vae import LatentNorm, patchify, unpatchify

    backend = MlxBackend(device="cpu", dtype="float32")
    encoder = load_module(backend, VaeEncoder(klein_config.vae), tensors["vae_encoder"], "vae", layout=mlx_layout)
    stats = backend.load_tensors(tensors["latent_norm"])
    norm = LatentNorm(stats["bn.running_mean"], stats["bn.running_var"], klein_config.latent_norm.batch_norm_eps)

    pixels = layout.reference_pixels(reference_image(64, 96), 16)[None]
    pipe = P.__new__(P)
    pipe.vae = reference_vae
    with torch.no_grad():
        expected = pipe._encode_vae_image(torch.from_numpy(pixels), generator=None).numpy()
    ours = norm.normalize(patchify(encoder(mx.array(pixels.transpose(0, 2, 3, 1)))))
    close(np.array(ours), expected)
    np.testing.assert_array_equal(np.array(unpatchify(mx.array(expected))),
                                  P._unpatchify_latents(torch.from_numpy(expected)).numpy())


def test_tokenizer_without_thinking_equals_transformers(tiny_klein_dir):
    """klein's template option (enable_thinking=False adds an empty think block) and truncation."""
    import transformers

    from ollimg.runtime.source import ModelSource
    from ollimg.runtime.tokenizer import load_tokenizer

    ours = load_tokenizer(ModelSource.from_dir(tiny_klein_dir))
    ref = transformers.AutoTokenizer.from_pretrained(tiny_klein_dir / "tokenizer")
    for prompt in ["a cat", "東京の夜景 — Café 🐼", ""]:
        text = ref.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=False)
        assert "<think>" in text and ours.render(prompt, enable_thinking=False) == text
        for length in (9, 512):
            expected = ref(text, max_length=length, truncation=True).input_ids
            assert ours.encode([prompt], length, enable_thinking=False)[0].tolist() == expected
