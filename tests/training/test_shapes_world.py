"""The shapes world: captions, the held-out split and the checker on ground-truth images."""

import copy
import random

import numpy as np
import pytest

from training.shapes import outlines
from training.shapes.check import score, summarize
from training.shapes.data import render, specs_for, to_uint8
from training.shapes.world import (
    COLORS, EXTENTS, HELDOUT, POSITION_NAMES, SHAPES, apart, heldout_specs, is_count, sample_spec,
)


def test_training_never_shows_a_heldout_triple():
    rng = random.Random(0)
    for _ in range(2000):
        spec = sample_spec(rng)
        assert all((s.color, s.kind, s.pos) not in HELDOUT for s in spec.shapes)
        assert all(s.color != spec.bg for s in spec.shapes)


def test_training_shapes_never_touch():
    rng = random.Random(1)
    specs = [sample_spec(rng) for _ in range(500)]
    assert all(apart(s.shapes) for s in specs)
    counts = [s for s in specs if is_count(s)]
    assert len(counts) > 100 and all(score(im, s).count for im, s in zip(to_uint8(render(counts)).numpy(), counts))


@pytest.mark.parametrize("kind", SHAPES)
def test_extents_are_the_outlines_bounding_boxes(kind: str):
    c = (np.arange(4000) + 0.5) / 4000 * 2.4 - 1.2  # steps of 0.0006
    u, v = np.meshgrid(c, c)
    ys, xs = np.nonzero(outlines.inside(np, kind, u, v))
    assert np.allclose((c[xs.min()], c[xs.max()], c[ys.min()], c[ys.max()]), EXTENTS[kind], atol=2e-3)


def test_heldout_set_is_fixed_and_heldout():
    specs = heldout_specs()
    assert len(specs) >= 150 and len({s.caption for s in specs}) == len(specs)
    assert [s.caption for s in specs] == [s.caption for s in heldout_specs()]
    named = [s for s in specs if not is_count(s)]  # a count names no position: nothing to hold out
    assert len(named) >= 120 and all((s.shapes[0].color, s.shapes[0].kind, s.shapes[0].pos) in HELDOUT for s in named)
    assert specs[0].caption.startswith("a ") and specs[0].caption.endswith(" background")


def test_batches_are_deterministic():
    assert [s.caption for s in specs_for(3, 7, 16)] == [s.caption for s in specs_for(3, 7, 16)]
    assert [s.caption for s in specs_for(3, 7, 16)] != [s.caption for s in specs_for(3, 8, 16)]


def test_checker_passes_ground_truth_and_fails_wrong_specs():
    specs = heldout_specs()[:40]
    images = to_uint8(render(specs)).numpy()
    assert summarize([score(im, s) for im, s in zip(images, specs)]) == {
        "background": 1.0, "color": 1.0, "position": 1.0, "kind": 1.0, "count": 1.0}
    for im, spec in zip(images[:10], specs):
        wrong = copy.deepcopy(spec)
        wrong.bg = next(c for c in COLORS if c not in (spec.bg, spec.shapes[0].color))
        assert not score(im, wrong).background
        wrong = copy.deepcopy(spec)
        wrong.shapes[0].color = next(c for c in COLORS if c not in (spec.bg, spec.shapes[0].color))
        assert not score(im, wrong).color
        wrong = copy.deepcopy(spec)
        wrong.shapes[0].pos = next(p for p in POSITION_NAMES if p != spec.shapes[0].pos)
        assert not score(im, wrong).position
