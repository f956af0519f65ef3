"""The MLX backend against diffusers' ZImagePipeline (and against our torch backend) on the tiny
fixture models, with the same initial latents.

Gates: fp32 final latents within 1e-4 of max|ref| and pixels within 1 level; bf16 pixels within
8 levels. Skipped only when mlx cannot be imported (install `mlx[cpu]` on Linux, `mlx` on macOS).
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed: pip install 'mlx[cpu]' (Linux) or mlx (macOS)")
import torch  # noqa: E402

from ollimg.errors import InvalidModel  # noqa: E402
from ollimg.runtime import load  # noqa: E402
from ollimg.runtime.noise import noise  # noqa: E402
from tests.parity.reference import CASES, compare, compare_case, reference_pipe  # noqa: E402

pytestmark = pytest.mark.mlx


@pytest.fixture(scope="module")
def ours(tiny_zimage_dir):
    return load(tiny_zimage_dir, backend="mlx", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference(tiny_zimage_dir):
    return reference_pipe(tiny_zimage_dir, torch.float32)


@pytest.mark.parametrize("prompts, options", CASES)
def test_matches_diffusers(ours, reference, prompts, options):
    compare_case(ours, reference, prompts, options)


def test_a_skipped_tensor_breaks_parity(ours, reference):
    """The gate can fail: zero one pad token (a tensor a careless loader could skip)."""
    dit = ours.components.modules["transformer"]
    saved = dit.cap_pad_token
    try:
        dit.cap_pad_token = mx.zeros_like(saved)
        with pytest.raises(AssertionError):
            compare(ours, reference, ["a cat"], width=32, height=32)
    finally:
        dit.cap_pad_token = saved


def test_bfloat16(tiny_zimage_dir, reference):
    ours16 = load(tiny_zimage_dir, backend="mlx", device="cpu", dtype="bfloat16")
    ref16 = reference_pipe(tiny_zimage_dir, torch.bfloat16)
    compare(ours16, ref16, ["a portrait of an old fisherman"], guidance=3.0, negative=["blurry"],
            latent_rtol=3e-2, levels=8, width=48, height=48)
    compare(ours16, reference, ["a portrait of an old fisherman"], latent_rtol=5e-2, levels=8, width=48, height=48)


@pytest.mark.parametrize("dtype, levels", [("float32", 1), ("bfloat16", 8)])
def test_same_seed_same_image_as_the_torch_backend(ours, tiny_zimage_dir, dtype, levels):
    mlx_pipe = ours if dtype == "float32" else load(tiny_zimage_dir, backend="mlx", device="cpu", dtype=dtype)
    torch_pipe = load(tiny_zimage_dir, backend="torch", device="cpu", dtype=dtype)
    kwargs = dict(negative_prompt="blurry", guidance=2.5, width=48, height=32, steps=3, seed=1234)
    a = mlx_pipe.generate("a red fox in the snow", **kwargs)
    b = torch_pipe.generate("a red fox in the snow", **kwargs)
    assert a.seed == b.seed == 1234
    diff = np.abs(np.asarray(a.images[0]).astype(int) - np.asarray(b.images[0]).astype(int))
    assert diff.max() <= levels


def test_fp8_model_against_its_dequantized_weights(tiny_zimage_dir, store_dir):
    from ollimg.create import create
    from ollimg.manifest import Store
    from ollimg.runtime.torch_backend import mapped

    model = create(Store(store_dir), "tiny:fp8", tiny_zimage_dir, quantize="fp8")
    refs = model.tensors()
    fp8_refs = {t: r for t, r in refs.items() if r.dtype == "F8_E4M3"}
    assert len(fp8_refs) > 10
    ours8 = load("tiny:fp8", backend="mlx", device="cpu", dtype="float32", models_dir=store_dir)
    ref = reference_pipe(tiny_zimage_dir, torch.float32)
    for title, weight_ref in fp8_refs.items():
        component, name = title.split("/", 1)
        name = name.removeprefix("model.") if component == "text_encoder" else name
        dequantized = mapped(weight_ref).float() * mapped(refs[title + "_scale"])[:, None]
        getattr(ref, component).get_parameter(name).data.copy_(dequantized)
    compare(ours8, ref, ["a cat on the moon"], guidance=2.0, negative=["blurry"], width=48, height=48)


def test_store_model_equals_directory_model(ours, tiny_zimage_dir, store_dir):
    from ollimg.create import create
    from ollimg.manifest import Store

    create(Store(store_dir), "tiny", tiny_zimage_dir)
    stored = load("tiny", backend="mlx", device="cpu", models_dir=store_dir)
    assert stored.backend.processor == "MLX" and stored.backend.memory() > 0
    a = stored.generate("a red fox", width=32, height=32, steps=2, seed=3)
    b = ours.generate("a red fox", width=32, height=32, steps=2, seed=3)
    assert np.array_equal(a.latents, b.latents)


def _copy_with(tiny_zimage_dir, tmp_path, edit):
    import shutil

    out = tmp_path / "model"
    shutil.copytree(tiny_zimage_dir, out)
    edit(out)
    return out


def test_wrong_shape_and_missing_weights_are_invalid_model(tiny_zimage_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    def edit_vae(change):
        def edit(root):
            path = root / "vae" / "diffusion_pytorch_model.safetensors"
            tensors = load_file(path)
            change(tensors)
            save_file(tensors, path)
        return edit

    wrong = edit_vae(lambda t: t.__setitem__("decoder.conv_out.bias", torch.zeros(4)))
    with pytest.raises(InvalidModel, match=r"decoder\.conv_out\.bias has shape \[4\], expected \[3\]"):
        load(_copy_with(tiny_zimage_dir, tmp_path / "a", wrong), backend="mlx", device="cpu")
    missing = edit_vae(lambda t: t.pop("decoder.conv_in.weight"))
    with pytest.raises(InvalidModel, match=r"decoder\.conv_in\.weight is missing"):
        load(_copy_with(tiny_zimage_dir, tmp_path / "b", missing), backend="mlx", device="cpu")


def test_compiled_denoising_step_matches(ours, reference):
    """The mx.compile path (the default on the GPU) gives the eager result and passes the same gate."""
    dit = ours.components.modules["transformer"]
    eager = ours.generate("a cat on a mat", width=32, height=48, steps=2, seed=2, guidance=2.0)
    dit.compiled = True
    try:
        compiled = compare(ours, reference, ["a cat on a mat"], width=32, height=48, steps=2, seed=2, guidance=2.0,
                           negative=[""])
    finally:
        dit.compiled = False
    assert np.abs(compiled.latents - eager.latents).max() <= 1e-6 * np.abs(eager.latents).max()


def test_equal_tensors_sharing_one_blob_load_under_both_names(tiny_zimage_dir, tmp_path, store_dir):
    """The store keeps equal tensors once; both names must still load (here: two equal norm weights)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from ollimg.create import create
    from ollimg.manifest import Store

    model = tmp_path / "model"
    shutil.copytree(tiny_zimage_dir, model)
    path = model / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    tensors["decoder.conv_norm_out.bias"] = tensors["decoder.conv_norm_out.weight"].clone()
    save_file(tensors, path)
    stored = create(Store(store_dir), "twins", model)
    refs = stored.tensors("vae/")
    assert refs["vae/decoder.conv_norm_out.bias"].path == refs["vae/decoder.conv_norm_out.weight"].path
    pipe = load("twins", backend="mlx", device="cpu", models_dir=store_dir)
    norm = pipe.components.modules["vae"].decoder.conv_norm_out
    assert np.array_equal(np.array(norm.bias), np.array(norm.weight))
