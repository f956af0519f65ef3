"""The shipped shapes model follows prompts it never saw in training.

Generates the fixed held-out set (160 prompts, training/shapes/world.py: 120 single shapes whose
color x shape x position triple never occurs in training, 20 counts of two or three identical
shapes, 20 pairs of different shapes) with our runtime on the CPU at the model's default
settings, scores every image with the checker (training/shapes/check.py: background, color,
position, kind, count) and holds the figures to GOALS.
"""

import pytest

from ollimg.builtin import builtin_models
from training.shapes.check import figures
from training.shapes.score import heldout_images
from training.shapes.world import heldout_specs

# Issue 19's goals (the first model: kind 0.344, count 0.944; this one: see training/shapes/README.md).
GOALS = {"background": 0.98, "color": 0.97, "position": 0.95, "kind": 0.90, "count": 0.90}


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
