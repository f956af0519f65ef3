"""Our torch pipeline against diffusers' ZImagePipeline on tiny fixture models, same initial latents.

Gates: fp32 latents within 1e-4 of max|ref| and pixels within 1 level; bf16 pixels within 8
levels. diffusers/transformers are test-only references.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ollimg.errors import InvalidInput, InvalidModel
from ollimg.runtime import load
from ollimg.runtime.noise import noise
from tests.parity.reference import CASES, compare, compare_case, reference_pipe


@pytest.fixture(scope="module")
def ours(tiny_zimage_dir):
    return load(tiny_zimage_dir, backend="torch", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference(tiny_zimage_dir):
    return reference_pipe(tiny_zimage_dir, torch.float32)


@pytest.mark.parametrize("prompts, options", CASES)
def test_matches_diffusers(ours, reference, prompts, options):
    compare_case(ours, reference, prompts, options)


def test_a_skipped_tensor_breaks_parity(ours, reference):
    """The gate can fail: perturb one pad token (a tensor a careless loader could skip)."""
    token = ours.components.modules["transformer"].cap_pad_token
    saved = token.detach().clone()
    try:
        token.data.mul_(0.0)
        with pytest.raises(AssertionError):
            compare(ours, reference, ["a cat"], width=32, height=32)
    finally:
        token.data.copy_(saved)


def test_bfloat16(tiny_zimage_dir, reference):
    ours = load(tiny_zimage_dir, backend="torch", device="cpu", dtype="bfloat16")
    ref = reference_pipe(tiny_zimage_dir, torch.bfloat16)
    compare(ours, ref, ["a portrait of an old fisherman"], guidance=3.0, negative=["blurry"], latent_rtol=3e-2,
            levels=8, width=48, height=48)
    # and within the same bound of the fp32 reference
    compare(ours, reference, ["a portrait of an old fisherman"], latent_rtol=5e-2, levels=8, width=48, height=48)


def test_fp8_model_against_its_dequantized_weights(tiny_zimage_dir, tmp_path, store_dir):
    from ollimg.create import create
    from ollimg.manifest import Store

    model = create(Store(store_dir), "tiny:fp8", tiny_zimage_dir, quantize="fp8")
    fp8_refs = {t: r for t, r in model.tensors().items() if r.dtype == "F8_E4M3"}
    assert len(fp8_refs) > 10
    ours = load("tiny:fp8", backend="torch", device="cpu", dtype="float32", models_dir=store_dir)
    ref = reference_pipe(tiny_zimage_dir, torch.float32)
    from ollimg.runtime.torch_backend import mapped

    refs = model.tensors()
    for title, weight_ref in fp8_refs.items():
        component, name = title.split("/", 1)
        module = getattr(ref, component)
        name = name.removeprefix("model.") if component == "text_encoder" else name
        dequantized = mapped(weight_ref).float() * mapped(refs[title + "_scale"])[:, None]
        module.get_parameter(name).data.copy_(dequantized)
    compare(ours, ref, ["a cat on the moon"], guidance=2.0, negative=["blurry"], width=48, height=48)


def test_store_model_equals_directory_model(ours, tiny_zimage_dir, store_dir):
    from ollimg.create import create
    from ollimg.manifest import Store

    create(Store(store_dir), "tiny", tiny_zimage_dir)
    stored = load("tiny", backend="torch", device="cpu", models_dir=store_dir)
    a = stored.generate("a red fox", width=32, height=32, steps=2, seed=3)
    b = ours.generate("a red fox", width=32, height=32, steps=2, seed=3)
    # Same weights, other memory alignment: float sums may round differently in the last bit.
    np.testing.assert_allclose(a.latents, b.latents, rtol=0, atol=1e-5)
    assert stored.name.startswith("tiny") and stored.digest.startswith("sha256:")


def test_same_seed_same_image_and_seed_returned(ours):
    a = ours.generate("a cat", width=32, height=32, steps=2, seed=11)
    b = ours.generate("a cat", width=32, height=32, steps=2, seed=11)
    c = ours.generate("a cat", width=32, height=32, steps=2)
    assert a.seed == 11 and isinstance(c.seed, int)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    assert not np.array_equal(a.latents, ours.generate("a cat", width=32, height=32, steps=2, seed=12).latents)


def test_given_latents_replace_the_noise(ours):
    latents = noise(99, 1, (16, 4, 4))
    a = ours.generate("a cat", width=32, height=32, steps=2, latents=latents, seed=1)
    b = ours.generate("a cat", width=32, height=32, steps=2, seed=99)
    assert np.array_equal(a.latents, b.latents)
    with pytest.raises(InvalidInput, match="latents"):
        ours.generate("a cat", width=32, height=32, latents=latents[:, :8])


@pytest.mark.parametrize("size", [(1000, 1024), (1024, 8), (0, 64), (4112, 64), (64, 4096 + 16)])
def test_bad_sizes_are_refused_before_any_work(ours, size):
    with pytest.raises(InvalidInput, match="multiples of 16"):
        ours.generate("a cat", width=size[0], height=size[1])


def _copy_with(tiny_zimage_dir, tmp_path, edit):
    import shutil

    out = tmp_path / "model"
    shutil.copytree(tiny_zimage_dir, out)
    edit(out)
    return out


def test_wrong_shape_weight_is_invalid_model(tiny_zimage_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    def edit(root):
        path = root / "vae" / "diffusion_pytorch_model.safetensors"
        tensors = load_file(path)
        tensors["decoder.conv_out.bias"] = torch.zeros(4)
        save_file(tensors, path)

    with pytest.raises(InvalidModel, match=r"decoder\.conv_out\.bias has shape \[4\], expected \[3\]"):
        load(_copy_with(tiny_zimage_dir, tmp_path, edit), backend="torch", device="cpu")


def test_missing_weight_and_missing_config_key_are_invalid_model(tiny_zimage_dir, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    def drop_weight(root):
        path = root / "vae" / "diffusion_pytorch_model.safetensors"
        tensors = load_file(path)
        del tensors["decoder.conv_in.weight"]
        save_file(tensors, path)

    with pytest.raises(InvalidModel, match=r"decoder\.conv_in\.weight is missing"):
        load(_copy_with(tiny_zimage_dir, tmp_path / "a", drop_weight), backend="torch", device="cpu")

    def drop_key(root):
        path = root / "transformer" / "config.json"
        config = json.loads(path.read_text())
        del config["n_layers"]
        path.write_text(json.dumps(config))

    with pytest.raises(InvalidModel, match="required key 'n_layers' is missing"):
        load(_copy_with(tiny_zimage_dir, tmp_path / "b", drop_key), backend="torch", device="cpu")


def test_text_features_equal_transformers_hidden_state_before_last_layer(ours, reference):
    prompts = ["a cat", "an astronaut riding a horse on the moon, 東京"]
    ids = ours.tokenizer.encode(prompts, 512)
    feats = ours.components.encode(ids)
    texts = [reference.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                     add_generation_prompt=True, enable_thinking=True) for p in prompts]
    batch = reference.tokenizer(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    mask = batch.attention_mask.bool()
    with torch.no_grad():
        hidden = reference.text_encoder(input_ids=batch.input_ids, attention_mask=mask,
                                        output_hidden_states=True).hidden_states[-2]
    for i, f in enumerate(feats):
        expected = hidden[i][mask[i]]
        assert f.shape == expected.shape
        torch.testing.assert_close(f, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_hidden_state_zero_is_the_embeddings():
    """A one-layer encoder's hidden_states[-2] is hidden state 0, the token embeddings (the shapes
    trainer's tiny configurations have one layer): ours concatenates states 0 and 2 as transformers
    numbers them (of three layers: the last one's is normed)."""
    from transformers import Qwen3Config, Qwen3Model

    from ollimg.runtime.components.qwen3.config import Qwen3Config as TextEncoderConfig
    from ollimg.runtime.components.qwen3.torch import TextEncoder

    cfg = dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1e6,
               attention_bias=False, max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(0)
    ref = Qwen3Model(Qwen3Config(**cfg)).eval()
    ours = TextEncoder(TextEncoderConfig.from_json(cfg), outputs=(0, 2))
    assert not ours.load_state_dict(ref.state_dict(), strict=False).missing_keys  # it stops after layer 2
    ids = np.random.default_rng(1).integers(0, 300, (1, 9))
    with torch.no_grad():
        hidden = ref(input_ids=torch.from_numpy(ids), output_hidden_states=True).hidden_states
        feats = ours([ids[0]])[0]
    torch.testing.assert_close(feats, torch.cat([hidden[0][0], hidden[2][0]], dim=-1), rtol=1e-5, atol=1e-5)


def test_a_table_in_its_stored_dtype_gives_the_features_of_one_cast_at_load():
    """On a GPU the embedding table stays in CPU memory in its stored dtype (`load_encoder`) and a
    prompt's rows are cast to the layers' dtype after the lookup: the features are those of a
    table cast at load, bit for bit."""
    from ollimg.runtime.components.qwen3.config import Qwen3Config as TextEncoderConfig
    from ollimg.runtime.components.qwen3.torch import TextEncoder

    cfg = dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=1e6)
    torch.manual_seed(0)
    ours = TextEncoder(TextEncoderConfig.from_json(cfg), outputs=(1,))
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.5)
    stored = ours.embed_tokens.weight.detach().to(torch.bfloat16)
    ids = [np.random.default_rng(1).integers(0, 300, 9), np.arange(4)]
    with torch.no_grad():
        ours.embed_tokens.weight = torch.nn.Parameter(stored.float(), requires_grad=False)
        cast_at_load = ours(ids)
        ours.embed_tokens.weight = torch.nn.Parameter(stored, requires_grad=False)
        ours.compute = (torch.device("cpu"), torch.float32)
        looked_up_then_cast = ours(ids)
    for a, b in zip(cast_at_load, looked_up_then_cast):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("fixture", ["tiny_zimage_dir", "tiny_klein_dir"])
def test_loading_imports_no_meta_kernels(fixture, request):
    """Modules are built on the meta device; an op whose meta kernel is Python (nn.Embedding's
    normal_ init) imports sympy and torch's Python decompositions with it: 1.5-3 s of every start."""
    import subprocess
    import sys

    code = ("import sys; from ollimg.runtime import load; load(sys.argv[1], backend='torch', device='cpu'); "
            "print('sympy' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, str(request.getfixturevalue(fixture))], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "False"


def test_cpu_weights_in_the_stored_dtype_are_memory_mapped(tiny_zimage_dir, store_dir):
    """fp32 on CPU from the store: parameters point into file mappings of the blobs (no copy in RAM)."""
    from ollimg.create import create
    from ollimg.manifest import Store

    create(Store(store_dir), "tiny", tiny_zimage_dir)
    pipe = load("tiny", backend="torch", device="cpu", dtype="float32", models_dir=store_dir)
    maps = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            maps.append((lo, hi, parts[-1] if len(parts) > 5 else ""))
    blobs = str(store_dir / "blobs")
    for module in pipe.components.modules.values():
        for name, param in module.named_parameters():
            ptr = param.data_ptr()
            where = next((path for lo, hi, path in maps if lo <= ptr < hi), "")
            assert where.startswith(blobs), f"{name} is not memory-mapped from a blob ({where!r})"


def test_offloaded_text_encoder_gives_the_same_image(ours, tiny_zimage_dir, monkeypatch):
    """OLLIMG_OFFLOAD=always: the text encoder is built from the mapped weights for each prompt and
    freed after; nothing changes in the result, and its weights do not count as resident."""
    monkeypatch.setenv("OLLIMG_OFFLOAD", "always")
    offloaded = load(tiny_zimage_dir, backend="torch", device="cpu", dtype="float32")
    assert offloaded.components.modules["text_encoder"] is None
    assert offloaded.backend.memory() < ours.backend.memory()
    kept = ours.generate(["a cat", "a dog"], width=32, height=32, steps=2, seed=4)
    again = offloaded.generate(["a cat", "a dog"], width=32, height=32, steps=2, seed=4)
    np.testing.assert_array_equal(again.latents, kept.latents)
    assert offloaded.backend.memory() < ours.backend.memory()  # still: the per-prompt copy is gone
    monkeypatch.setenv("OLLIMG_OFFLOAD", "sometimes")
    with pytest.raises(InvalidInput, match="OLLIMG_OFFLOAD"):
        load(tiny_zimage_dir, backend="torch", device="cpu", dtype="float32")
