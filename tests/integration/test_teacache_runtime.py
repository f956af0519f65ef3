"""TeaCache in the real runtime (ollimg/runtime/teacache.py through the Z-Image and FLUX.2 klein
torch and MLX transformers) on the tiny fixture models: threshold 0 reproduces the uncached image
exactly (with and without classifier-free guidance, across Z-Image's CFG truncation, MLX compiled
too, klein with a reference image), a large threshold skips every middle step, and calibration
fits and stores what the rule reads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ollimg.errors import InvalidInput
from ollimg.runtime import load
from ollimg.runtime.teacache import Calibration, calibrate

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
    return plain


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
    pipe = load(tiny_zimage_dir, backend="mlx", device="cpu", dtype="float32")
    pipe.calibration = Calibration((1.0, 0.0), 0.0, 6, 1, 1)  # the fit is tested on torch; the rule is shared
    return pipe


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


# FLUX.2 klein: the distilled model never guides; the base model runs its CFG branches as two
# forwards per step, each with its own cache. 32x48 is a multiple of klein's 16 pixels per cell.
KLEIN_SETTINGS = [pytest.param("distilled", {}, id="distilled"),
                  pytest.param("base", {"guidance": 4.0, "negative_prompt": "blurry"}, id="base_cfg"),
                  pytest.param("distilled", {"images": "reference"}, id="distilled_reference")]


def quick_klein(directory, tmp_path_factory):
    """A copy of a klein fixture whose ollimg.json defaults keep calibration quick: 32x32 images
    rather than 1024x1024, prompts padded to 64 tokens rather than 512."""
    copy = tmp_path_factory.mktemp("klein-quick") / "model"
    shutil.copytree(directory, copy)
    defaults = {"width": 32, "height": 32, "max_sequence_length": 64}
    (copy / "ollimg.json").write_text(json.dumps({"defaults": defaults}))
    return copy


@pytest.fixture(scope="module")
def klein_dirs(tiny_klein_dir, tiny_klein_base_dir, tmp_path_factory):
    return {"distilled": quick_klein(tiny_klein_dir, tmp_path_factory),
            "base": quick_klein(tiny_klein_base_dir, tmp_path_factory)}


def klein_options(options):
    from tests.parity.klein_reference import reference_image

    if options.get("images") == "reference":
        options["images"] = [reference_image(64, 64, seed=0)]
    return options


def check_klein(pipe, options):
    """Threshold 0 is the uncached image, bit for bit; 100 reuses every middle step."""
    plain = check_threshold_zero_is_exact(pipe, options)
    cached = pipe.generate(PROMPTS, **SMALL, **options, teacache=100.0)
    assert (cached.timings["steps_run"], cached.timings["steps_reused"]) == (2, 4)  # first and last run
    assert not np.array_equal(cached.latents, plain.latents) and np.isfinite(cached.latents).all()


@pytest.fixture(scope="module")
def klein_pipes(klein_dirs):
    return {k: calibrated(load(d, backend="torch", device="cpu", dtype="float32")) for k, d in klein_dirs.items()}


@pytest.mark.parametrize("variant, options", KLEIN_SETTINGS)
def test_klein_threshold_zero_is_exact_and_a_large_one_skips(klein_pipes, variant, options):
    check_klein(klein_pipes[variant], klein_options(options))


def test_klein_calibration_records_each_cfg_branch(klein_pipes):
    distilled, base = klein_pipes["distilled"].calibration, klein_pipes["base"].calibration
    assert (distilled.steps, distilled.prompts, distilled.samples) == (6, 2, 2 * 5)  # one branch, steps 1..5
    assert (base.steps, base.prompts, base.samples) == (6, 2, 2 * 2 * 5)  # cond and uncond
    assert np.isfinite(base.coefficients).all() and base.fit_error >= 0


@pytest.mark.mlx
@pytest.mark.parametrize("variant, options", KLEIN_SETTINGS)
def test_klein_mlx_threshold_zero_is_exact_and_a_large_one_skips(klein_dirs, variant, options):
    pytest.importorskip("mlx.core", reason="mlx is not installed: pip install 'mlx[cpu]' (Linux) or mlx (macOS)")
    pipe = load(klein_dirs[variant], backend="mlx", device="cpu", dtype="float32")
    pipe.calibration = Calibration((1.0, 0.0), 0.0, 6, 1, 1)  # the fit is tested on torch; the rule is shared
    check_klein(pipe, klein_options(options))


def test_klein_inpainting_caches_only_the_steps_that_run(klein_pipes):
    """An inpaint at strength 0.5 runs the last 3 of 6 steps: threshold 0 is exact, and a large one
    reuses only the middle one of those (the first and last that run always run)."""
    from PIL import Image

    from tests.parity.klein_reference import reference_image

    pipe = klein_pipes["distilled"]
    image = reference_image(32, 48, seed=1)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (0, 0, image.width // 2, image.height))
    options = {"images": [image], "mask": mask, "strength": 0.5}
    plain = pipe.generate(PROMPTS, **SMALL, **options)
    exact = pipe.generate(PROMPTS, **SMALL, **options, teacache=0.0)
    assert (exact.timings["steps_run"], exact.timings["steps_reused"]) == (3, 0)
    assert np.array_equal(exact.latents, plain.latents) and np.array_equal(pixels(exact), pixels(plain))
    cached = pipe.generate(PROMPTS, **SMALL, **options, teacache=100.0)
    assert (cached.timings["steps_run"], cached.timings["steps_reused"]) == (2, 1)
    assert not np.array_equal(cached.latents, plain.latents)
