"""The shipped shapes model follows prompts it never saw in training.

Generates the fixed held-out set (120 single-shape prompts whose color x shape x position triple
never occurs in training, training/shapes/world.py) with our runtime on the CPU at the model's
default settings (8 steps, guidance 0, 128x128), scores every image with the pixel-statistics
checker (training/shapes/check.py) and holds the figures to the goals of issue 7.
"""

import numpy as np
import pytest

from ollimg.builtin import builtin_models
from training.shapes.check import score, summarize
from training.shapes.world import heldout_specs

BATCH = 16  # prompts per generate call (the runtime's per-request limit)


@pytest.mark.slow
def test_shapes_heldout_quality():
    from ollimg.runtime import load

    pipe = load(str(builtin_models()["shapes"]), backend="torch", device="cpu")
    specs = heldout_specs()
    images = []
    for start in range(0, len(specs), BATCH):
        chunk = specs[start:start + BATCH]
        result = pipe.generate([s.caption for s in chunk], seed=start)  # prompt j gets seed j
        images += [np.asarray(im.convert("RGB")) for im in result.images]
    assert len(images) == len(specs) >= 100
    assert all(im.shape == (128, 128, 3) for im in images), "the model's defaults are 128x128"
    figures = summarize([score(im, spec) for im, spec in zip(images, specs)])
    print(f"held-out ({len(specs)} prompts, 8 steps): {figures}")
    assert figures["background"] >= 0.95, figures
    assert figures["color"] >= 0.90, figures
    assert figures["position"] >= 0.80, figures
