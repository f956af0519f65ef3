"""Our FLUX.2 klein torch pipeline against diffusers' Flux2KleinPipeline on the tiny fixture models,
same initial latents, loaded through `ollimg.runtime.load` (the family table, the real loader).

Gates: fp32 latents within 1e-4 of max|ref| and pixels within 1 level; bf16 pixels within 8
levels. Text-only and with one and two reference images, square and non-square; the distilled
model (guidance ignored) and the base model (CFG with a negative prompt).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ollimg.errors import InvalidInput, InvalidModel
from ollimg.runtime import load
from tests.parity.klein_reference import BASE_CASES, CASES, compare, reference_image, reference_pipe, with_images


@pytest.fixture(scope="module")
def ours(tiny_klein_dir):
    return load(tiny_klein_dir, backend="torch", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference(tiny_klein_dir):
    return reference_pipe(tiny_klein_dir, torch.float32)


@pytest.fixture(scope="module")
def ours_base(tiny_klein_base_dir):
    return load(tiny_klein_base_dir, backend="torch", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference_base(tiny_klein_base_dir):
    return reference_pipe(tiny_klein_base_dir, torch.float32)


@pytest.mark.parametrize("prompts, options", CASES)
def test_distilled_matches_diffusers(ours, reference, prompts, options):
    result = compare(ours, reference, prompts, **with_images(options))
    assert result.seeds == list(range(7, 7 + len(prompts) * options.get("n", 1)))


@pytest.mark.parametrize("prompts, options", BASE_CASES)
def test_base_matches_diffusers(ours_base, reference_base, prompts, options):
    compare(ours_base, reference_base, prompts, **with_images(options))


def test_the_gate_can_fail(ours, reference):
    """A skipped BatchNorm statistic (the mean left at zero) is caught."""
    norm = ours.components.modules["latent_norm"]
    saved = norm.mean.clone()
    try:
        norm.mean.zero_()
        with pytest.raises(AssertionError):
            compare(ours, reference, ["a cat"], width=32, height=32, steps=2)
    finally:
        norm.mean.copy_(saved)


def test_bfloat16(tiny_klein_dir, tiny_klein_base_dir, reference):
    """The gate is the pixels (8 levels). Latents get 5e-2: diffusers runs klein's latents and
    scheduler steps in bf16 where we keep float32, and CFG amplifies the difference."""
    ours = load(tiny_klein_dir, backend="torch", device="cpu", dtype="bfloat16")
    ref = reference_pipe(tiny_klein_dir, torch.bfloat16)
    images = with_images({"images": [(64, 80)]})["images"]
    compare(ours, ref, ["a portrait of an old fisherman"], images=images, width=48, height=64, latent_rtol=5e-2, levels=8)
    # and within the same bound of the fp32 reference
    compare(ours, reference, ["a portrait of an old fisherman"], latent_rtol=5e-2, levels=8, width=48, height=48)
    base = load(tiny_klein_base_dir, backend="torch", device="cpu", dtype="bfloat16")
    compare(base, reference_pipe(tiny_klein_base_dir, torch.bfloat16), ["a fox"], guidance=4.0, negative=["blurry"],
            latent_rtol=5e-2, levels=8, width=32, height=48)


def test_defaults_follow_the_variant(ours, ours_base):
    assert (ours.defaults.steps, ours.defaults.guidance) == (4, 1.0)
    assert (ours_base.defaults.steps, ours_base.defaults.guidance) == (50, 4.0)
    assert ours.config.is_distilled and not ours_base.config.is_distilled
    result = ours.generate("a cat", width=32, height=32, seed=1, max_sequence_length=16)
    assert result.steps == 4


def test_same_seed_same_image_and_latents_replace_the_noise(ours):
    from ollimg.runtime.noise import noise

    a = ours.generate("a cat", width=32, height=32, steps=2, seed=11, max_sequence_length=32)
    b = ours.generate("a cat", width=32, height=32, steps=2, seed=11, max_sequence_length=32)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    latents = noise(11, 1, (32, 2, 2))
    c = ours.generate("a cat", width=32, height=32, steps=2, latents=latents, seed=1, max_sequence_length=32)
    assert np.array_equal(a.latents, c.latents)
    with pytest.raises(InvalidInput, match="latents"):
        ours.generate("a cat", width=32, height=32, latents=latents[:, :16])


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=40, height=32), "multiples of 16"),
    (dict(images=[reference_image(40, 200)]), "too small"),
    (dict(images=[reference_image(64, 64)] * 9), "at most 8 reference images"),
    (dict(images=["not an image"]), "must be an image"),
    (dict(max_sequence_length=0), "max_sequence_length"),
])
def test_bad_input_is_refused_before_any_work(ours, kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        ours.generate("a cat", steps=1, **kwargs)


def test_wrong_config_and_weights_are_invalid_model(tiny_klein_dir, tmp_path):
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    def copy(name):
        out = tmp_path / name
        shutil.copytree(tiny_klein_dir, out)
        return out

    bad = copy("out_layers")
    (bad / "ollimg.json").write_text(json.dumps({"defaults": {"text_encoder_out_layers": [9, 18, 31]}}))
    with pytest.raises(InvalidModel, match=r"hidden states \[9, 18, 31\] are out of range"):
        load(bad, backend="torch", device="cpu")
    bad = copy("bn")
    path = bad / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    del tensors["bn.running_var"]
    save_file(tensors, path)
    with pytest.raises(InvalidModel, match=r"bn\.running_var is missing"):
        load(bad, backend="torch", device="cpu")
    bad = copy("scheduler")
    path = bad / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_dynamic_shifting": False}))
    with pytest.raises(InvalidModel, match="klein shifts dynamically"):
        load(bad, backend="torch", device="cpu")


def fp8_reference(tiny_klein_dir, store_dir, name="klein:fp8", dtype=torch.float32, device="cpu"):
    """The fp8 model made by the real create, and diffusers holding its dequantized weights."""
    from ollimg.create import create
    from ollimg.manifest import Store
    from ollimg.runtime.torch_backend import mapped

    model = create(Store(store_dir), name, tiny_klein_dir, quantize="fp8")
    refs = model.tensors()
    fp8 = {t: r for t, r in refs.items() if r.dtype == "F8_E4M3"}
    components = {t.split("/", 1)[0] for t in fp8}
    assert components == {"transformer", "text_encoder"} and len(fp8) > 20
    ref = reference_pipe(tiny_klein_dir, dtype, device=device)
    for title, weight in fp8.items():
        component, key = title.split("/", 1)  # Qwen3ForCausalLM keeps its `model.` prefix
        dequantized = mapped(weight).float() * mapped(refs[title + "_scale"])[:, None]
        getattr(ref, component).get_parameter(key).data.copy_(dequantized.to(device))
    return ref


def test_fp8_model_against_its_dequantized_weights(tiny_klein_dir, store_dir):
    ref = fp8_reference(tiny_klein_dir, store_dir)
    ours = load("klein:fp8", backend="torch", device="cpu", dtype="float32", models_dir=store_dir)
    linear = ours.components.modules["transformer"].transformer_blocks[0].attn.to_q
    assert linear.weight.dtype == torch.float8_e4m3fn  # kept in fp8, dequantized per call
    images = with_images({"images": [(64, 64)]})["images"]
    compare(ours, ref, ["a cat on the moon"], images=images, width=48, height=32)


def test_offloaded_text_encoder_gives_the_same_image(ours, tiny_klein_dir, monkeypatch):
    """OLLIMG_OFFLOAD=always: the text encoder streams its layers per prompt (the padded, masked
    run klein needs); nothing changes in the result, and its weights do not count as resident."""
    monkeypatch.setenv("OLLIMG_OFFLOAD", "always")
    offloaded = load(tiny_klein_dir, backend="torch", device="cpu", dtype="float32")
    assert offloaded.components.modules["text_encoder"] is None
    assert offloaded.backend.memory() < ours.backend.memory()
    kwargs = dict(width=32, height=32, steps=2, seed=4, max_sequence_length=24)
    np.testing.assert_array_equal(offloaded.generate(["a cat", "a dog"], **kwargs).latents,
                                  ours.generate(["a cat", "a dog"], **kwargs).latents)
