"""The shapes world: captions, the held-out split and the checker on ground-truth images."""

import copy
import random

from training.shapes.check import score, summarize
from training.shapes.data import render, specs_for, to_uint8
from training.shapes.world import COLORS, HELDOUT, POSITION_NAMES, heldout_specs, is_count, sample_spec


def test_training_never_shows_a_heldout_triple():
    rng = random.Random(0)
    for _ in range(2000):
        spec = sample_spec(rng)
        assert all((s.color, s.kind, s.pos) not in HELDOUT for s in spec.shapes)
        assert all(s.color != spec.bg for s in spec.shapes)


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
