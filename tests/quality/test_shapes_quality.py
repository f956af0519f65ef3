"""The shipped shapes model follows prompts it never saw in training.

Generates the fixed held-out set (160 prompts, training/shapes/world.py: 120 single shapes whose
color x shape x position triple never occurs in training, 20 counts of two or three identical
shapes, 20 pairs of different shapes) with our runtime on the CPU at the model's default
settings, scores every image with the checker (training/shapes/check.py: background, color,
position, kind, count, and stray and blemish pixels for specks) and holds the figures to the goals.
"""

import pytest

from ollimg.builtin import builtin_models
from training.shapes.check import figures
from training.shapes.score import heldout_images
from training.shapes.world import heldout_specs

# Issue 19's goals (the first model: kind 0.344, count 0.944; this one: see training/shapes/README.md).
GOALS = {"background": 0.98, "color": 0.97, "position": 0.95, "kind": 0.90, "count": 0.90}
# No speck artefact: stray pixels (no mix of two of the prompt's colors) in at most 1 image in 10,
# and few blemish pixels (inside a shape, off its color). The first model had stray pixels in 136
# of 160 images; the third, before its decoder was refined, in 100 (3.3 pixels each) with 31.9
# blemish pixels an image; shipped: 7 images (0.07 pixels each), 1.25 blemish pixels an image.
MOST_IMAGES_WITH_STRAY_PIXELS = 0.10
MOST_BLEMISH_PIXELS_PER_IMAGE = 2.5


@pytest.mark.slow
@pytest.mark.timeout(900)  # 160 images; the suite's 300 s is too short on a loaded 2-core machine
def test_shapes_heldout_quality():
    specs = heldout_specs()
    images = heldout_images(builtin_models()["shapes"])
    assert len(images) == len(specs) >= 150
    found = figures(images, specs)
    print(f"held-out ({len(specs)} prompts, the model's defaults): {found}")
    for name, goal in GOALS.items():
        assert found["all"][name] >= goal, (name, found)
    assert found["images_with_stray_pixels"] <= MOST_IMAGES_WITH_STRAY_PIXELS * len(specs), found
    assert found["blemish_pixels_per_image"] <= MOST_BLEMISH_PIXELS_PER_IMAGE, found
