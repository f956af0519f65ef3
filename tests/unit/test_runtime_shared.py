"""Backend-neutral runtime pieces: configs, scheduler, tokenizer, layout, noise, backend choice."""

from __future__ import annotations

import numpy as np
import pytest

from ollimg.errors import InvalidInput, InvalidModel
from ollimg.runtime import backend
from ollimg.runtime.models.zimage import layout
from ollimg.runtime.noise import noise
from ollimg.runtime.components.qwen3.config import Qwen3Config as TextEncoderConfig
from ollimg.runtime.models.zimage.config import TransformerConfig
from ollimg.runtime.flow_match import FlowMatchConfig as SchedulerConfig, schedule
from ollimg.runtime.models.zimage.pipeline import model_time

QWEN3_4B = {  # the real text_encoder/config.json keys (transformers 4.51 form: rope_theta at the top)
    "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000, "vocab_size": 151936,
    "hidden_act": "silu", "attention_bias": False, "rope_scaling": None,
}


def test_text_encoder_config_both_rope_forms():
    old = TextEncoderConfig.from_json(QWEN3_4B)
    new_form = {k: v for k, v in QWEN3_4B.items() if k != "rope_theta"}
    new_form["rope_parameters"] = {"rope_theta": 1000000.0, "rope_type": "default"}
    assert old == TextEncoderConfig.from_json(new_form) and old.rope_theta == 1e6


def test_missing_key_is_invalid_model():
    raw = {k: v for k, v in QWEN3_4B.items() if k != "head_dim"}
    with pytest.raises(InvalidModel, match="'head_dim' is missing"):
        TextEncoderConfig.from_json(raw)
    with pytest.raises(InvalidModel, match="dim / n_heads"):
        TransformerConfig.from_json({
            "all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 64, "n_layers": 1,
            "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "norm_eps": 1e-5, "qk_norm": True,
            "cap_feat_dim": 8, "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [8, 8, 8], "axes_lens": [8, 8, 8],
        })


def test_scheduler_matches_the_reference_grid():
    config = SchedulerConfig.from_json({"num_train_timesteps": 1000, "use_dynamic_shifting": False, "shift": 3.0})
    sigmas, timesteps = schedule(8, config)
    np.testing.assert_allclose(sigmas, [1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3, 0.0], atol=1e-4)
    np.testing.assert_allclose(schedule(9, config)[0][:4], [1.0, 0.96, 0.9130, 0.8571], atol=1e-4)
    assert timesteps.dtype == np.float32 and model_time(timesteps[0]) == 0.0
    with pytest.raises(InvalidModel, match="shift_terminal"):
        SchedulerConfig.from_json({"shift_terminal": 0.02})
    with pytest.raises(InvalidModel, match="time_shift_type"):
        SchedulerConfig.from_json({"use_dynamic_shifting": True, "time_shift_type": "cubic"})
    with pytest.raises(ValueError, match="mu"):
        schedule(4, SchedulerConfig.from_json({"use_dynamic_shifting": True}))


def test_dynamically_shifted_schedule_equals_diffusers():
    """A time shift by mu over a pipeline's own float64 grid, as FLUX-style pipelines set it."""
    diffusers = pytest.importorskip("diffusers")

    for kind in ("exponential", "linear"):
        ref = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type=kind)
        config = SchedulerConfig.from_json(dict(ref.config))
        for steps, mu in ((1, 0.5), (4, 1.9), (28, 2.3), (50, 0.7)):
            grid = np.linspace(1.0, 1 / steps, steps)
            ref.set_timesteps(sigmas=grid, mu=mu)
            sigmas, timesteps = schedule(steps, config, sigmas=grid, mu=mu)
            np.testing.assert_array_equal(sigmas, ref.sigmas.numpy())
            np.testing.assert_array_equal(timesteps, ref.timesteps.numpy())


def test_scheduler_equals_diffusers():
    import torch
    diffusers = pytest.importorskip("diffusers")
    from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

    ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    for steps in (1, 2, 8, 9, 50):
        ref.set_timesteps(sigmas=get_default_z_image_sigmas(steps), mu=0.7)
        sigmas, timesteps = schedule(steps, SchedulerConfig(shift=3.0))
        # torch's vectorised linspace rounds a few long grids differently in the last bit
        np.testing.assert_array_max_ulp(sigmas, ref.sigmas.numpy(), maxulp=0 if steps <= 9 else 2)
        np.testing.assert_array_max_ulp(timesteps, ref.timesteps.numpy(), maxulp=0 if steps <= 9 else 2)
        t = ref.timesteps[:1]
        assert model_time(timesteps[0]) == ((1000 - t) / 1000).numpy()[0]
    del torch


def test_tokenizer_equals_transformers(tiny_zimage_dir):
    transformers = pytest.importorskip("transformers")
    from ollimg.runtime.source import ModelSource
    from ollimg.runtime.tokenizer import load_tokenizer

    ours = load_tokenizer(ModelSource.from_dir(tiny_zimage_dir))
    ref = transformers.AutoTokenizer.from_pretrained(tiny_zimage_dir / "tokenizer")
    prompts = ["a cat", "東京の夜景 — Café 🐼", "  spaces\n\nand <|im_end|> inside", ""]
    for prompt in prompts:
        text = ref.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=True)
        assert ours.render(prompt) == text
        expected = ref(text, max_length=12, truncation=True).input_ids
        assert ours.encode([prompt], 12)[0].tolist() == expected


def test_positions_and_padding():
    assert layout.padded(1) == 32 and layout.padded(32) == 32 and layout.padded(33) == 64
    caption = layout.caption_positions(5)
    assert caption.shape == (32, 3) and caption[0].tolist() == [1, 0, 0] and caption[31].tolist() == [32, 0, 0]
    image = layout.image_positions(32, 2, 3)
    assert image.shape == (32, 3)
    assert image[:6].tolist() == [[33, 0, 0], [33, 0, 1], [33, 0, 2], [33, 1, 0], [33, 1, 1], [33, 1, 2]]
    assert not image[6:].any()


def test_noise_is_per_image_seeded_and_stable():
    a = noise(42, 3, (16, 2, 2))
    assert a.dtype == np.float32 and a.shape == (3, 16, 2, 2)
    np.testing.assert_array_equal(a[1], noise(43, 1, (16, 2, 2))[0])
    # pinned: the same seed must give the same image on every backend and release
    np.testing.assert_allclose(noise(0, 1, (4,))[0], np.random.Generator(np.random.PCG64(0)).standard_normal(
        (4,), dtype=np.float32))


def test_backend_choice(monkeypatch):
    monkeypatch.setenv("OLLIMG_BACKEND", "torch")
    assert backend.choose() == "torch"
    assert backend.choose("mlx") == "mlx"
    with pytest.raises(InvalidInput):
        backend.choose("tpu")
    monkeypatch.setenv("OLLIMG_BACKEND", "auto")
    assert backend.choose() in ("torch", "mlx")


def test_the_seed_ceiling_is_the_apis():
    """One ceiling: what the API states (api.MAX_SEED) is what the runtime takes, for every image."""
    from types import SimpleNamespace

    from ollimg import api
    from ollimg.runtime.pipeline import request
    from ollimg.runtime.request import MAX_IMAGES, MAX_SEED

    assert api.MAX_SEED == MAX_SEED and MAX_SEED + MAX_IMAGES - 1 == 2**53 - 1
    defaults = SimpleNamespace(width=16, height=16, steps=1, guidance=0.0)
    top = request(defaults, "p", None, None, None, None, None, MAX_SEED, MAX_IMAGES)
    assert top.seed == MAX_SEED
    for bad in (MAX_SEED + 1, -1, True, 1.0):
        with pytest.raises(InvalidInput, match=f"from 0 to {MAX_SEED}"):
            request(defaults, "p", None, None, None, None, None, bad, 1)
