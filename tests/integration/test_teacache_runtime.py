"""TeaCache in the real runtime (ollimg/runtime/teacache.py through Z-Image's torch and MLX
transformers) on the tiny fixture model: threshold 0 reproduces the uncached image exactly (with
and without classifier-free guidance, across CFG truncation, MLX compiled too), a large threshold
skips every middle step, and calibration fits and stores what the rule reads."""

from __future__ import annotations

import numpy as np
import pytest

from ollimg.errors import InvalidInput
from ollimg.runtime import load
from ollimg.runtime.teacache import calibrate

PROMPTS = ["a red circle", "two blue squares on a white background"]
# guidance 2 with truncation 0.5: batched CFG (two branches) first, the positive branch alone after
SETTINGS = [{"guidance": 0.0}, {"guidance": 2.0, "cfg_truncation": 0.5}]
SMALL = {"width": 32, "height": 48, "steps": 6, "seed": 3}


def calibrated(pipe):
    pipe.calibration = calibrate(pipe, PROMPTS, steps=6)
    return pipe


@pytest.fixture(scope="module")
def torch_pipe(tiny_zimage_dir):
    return calibrated(load(tiny_zimage_dir, backend="torch", device="cpu", dtype="float32"))


def pixels(result):
    return np.stack([np.asarray(im) for im in result.images])


def check_threshold_zero_is_exact(pipe, settings):
    plain = pipe.generate(PROMPTS, **SMALL, **settings)
    cached = pipe.generate(PROMPTS, **SMALL, **settings, teacache=0.0)
    assert cached.timings["steps_run"] == SMALL["steps"] and cached.timings["steps_reused"] == 0
    assert np.array_equal(cached.latents, plain.latents) and np.array_equal(pixels(cached), pixels(plain))
    assert "steps_reused" not in plain.timings


@pytest.mark.parametrize("settings", SETTINGS)
def test_torch_threshold_zero_reproduces_the_uncached_image(torch_pipe, settings):
    check_threshold_zero_is_exact(torch_pipe, settings)


@pytest.mark.parametrize("settings", SETTINGS)
def test_torch_large_threshold_skips_every_middle_step(torch_pipe, settings):
    plain = torch_pipe.generate(PROMPTS, **SMALL, **settings)
    cached = torch_pipe.generate(PROMPTS, **SMALL, **settings, teacache=100.0)
    assert (cached.timings["steps_run"], cached.timings["steps_reused"]) == (2, 4)  # first and last run
    assert not np.array_equal(cached.latents, plain.latents)
    assert np.isfinite(cached.latents).all()


def test_calibration_fits_the_recorded_steps(torch_pipe):
    c = torch_pipe.calibration
    assert (c.steps, c.prompts) == (6, 2) and c.samples == 2 * 5  # one branch, steps 1..5
    assert np.isfinite(c.coefficients).all() and c.fit_error >= 0
    fractions = list(c.skipped.values())
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] <= 4 / 6


def test_an_uncalibrated_model_refuses(tiny_zimage_dir):
    pipe = load(tiny_zimage_dir, backend="torch", device="cpu", dtype="float32")
    assert pipe.calibration is None
    with pytest.raises(InvalidInput, match="no TeaCache calibration; run: ollimg calibrate"):
        pipe.generate("x", **SMALL, teacache=0.3)


@pytest.fixture(scope="module")
def mlx_pipe(tiny_zimage_dir):
    pytest.importorskip("mlx.core", reason="mlx is not installed: pip install 'mlx[cpu]' (Linux) or mlx (macOS)")
    return calibrated(load(tiny_zimage_dir, backend="mlx", device="cpu", dtype="float32"))


@pytest.mark.mlx
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("settings", SETTINGS)
def test_mlx_threshold_zero_reproduces_the_uncached_image(mlx_pipe, compiled, settings):
    dit = mlx_pipe.components.modules["transformer"]
    dit.compiled = compiled
    try:
        check_threshold_zero_is_exact(mlx_pipe, settings)
        cached = mlx_pipe.generate(PROMPTS, **SMALL, **settings, teacache=100.0)
        assert (cached.timings["steps_run"], cached.timings["steps_reused"]) == (2, 4)
    finally:
        dit.compiled = False
