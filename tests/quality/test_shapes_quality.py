"""The shipped shapes model follows prompts it never saw in training.

Generates the fixed held-out set (160 prompts, training/shapes/world.py: 120 single shapes whose
color x shape x position triple never occurs in training, 20 counts of two or three identical
shapes, 20 pairs of different shapes) with our runtime on the CPU at the model's default
settings, scores every image with the checker (training/shapes/check.py: background, color,
position, kind, count) and holds the figures to GOALS.
"""

import numpy as np
import pytest

from ollimg.builtin import builtin_models
from training.shapes.check import score, summarize
from training.shapes.world import heldout_specs

BATCH = 16  # prompts per generate call (the runtime's per-request limit)
# Issue 7's goals for the first three, and a floor under the first model's kind (0.344) and count
# (0.944). Issue 19's goals, for the model that replaces it: background 0.98, color 0.97,
# position 0.95, kind 0.90, count 0.90.
GOALS = {"background": 0.95, "color": 0.90, "position": 0.80, "kind": 0.30, "count": 0.90}


@pytest.mark.slow
@pytest.mark.timeout(900)  # 160 images; the suite's 300 s is too short on a loaded 2-core machine
def test_shapes_heldout_quality():
    from ollimg.runtime import load

    pipe = load(str(builtin_models()["shapes"]), backend="torch", device="cpu")
    specs = heldout_specs()
    images = []
    for start in range(0, len(specs), BATCH):
        chunk = specs[start:start + BATCH]
        result = pipe.generate([s.caption for s in chunk], seed=start)  # prompt j gets seed j
        images += [np.asarray(im.convert("RGB")) for im in result.images]
    assert len(images) == len(specs) >= 150
    scores = [score(im, spec) for im, spec in zip(images, specs)]
    figures = summarize(scores)
    print(f"held-out ({len(specs)} prompts, the model's defaults): {figures}")
    print(f"  singles {summarize(scores[:120])}\n  counts {summarize(scores[120:140])}\n  pairs {summarize(scores[140:])}")
    print(f"  images with stray pixels: {sum(s.stray_pixels > 0 for s in scores)}")
    for name, goal in GOALS.items():
        assert figures[name] >= goal, (name, figures)
