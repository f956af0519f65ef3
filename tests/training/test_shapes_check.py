"""The checker's kind and count scores and its artefact counts: right on ideal renders, wrong on
deliberately wrong ones."""

import copy

import numpy as np
import pytest

from training.shapes.check import blobs, classify, kind_of, score, summarize
from training.shapes.data import render, to_uint8
from training.shapes.world import SHAPES, SIZES, Shape, Spec, cell_center, heldout_specs, is_count


def _images(specs: list[Spec]) -> np.ndarray:
    return to_uint8(render(specs)).numpy()


def _scene(kind: str, size: str, cells: list[str], color: str = "red", bg: str = "blue") -> Spec:
    shapes = [Shape(kind, color, size, p, *cell_center(p)) for p in cells]
    return Spec(bg, shapes, f"a {size} {color} {kind}" if len(cells) == 1 else f"{len(cells)} shapes")


def test_heldout_set_has_counts_and_pairs():
    specs = heldout_specs()
    assert len(specs) >= 150
    counts = [s for s in specs if is_count(s)]
    assert sorted({len(s.shapes) for s in counts}) == [2, 3]
    assert all(len({(x.kind, x.color, x.size) for x in s.shapes}) == 1 for s in counts)
    pairs = [s for s in specs if len(s.shapes) == 2 and not is_count(s)]
    assert len(pairs) >= 10 and all(a.kind != b.kind for a, b in (s.shapes for s in pairs))


def test_ideal_renders_score_right_on_all_five():
    specs = heldout_specs()
    scores = [score(im, s) for im, s in zip(_images(specs), specs)]
    assert summarize(scores) == {"background": 1.0, "color": 1.0, "position": 1.0, "kind": 1.0, "count": 1.0}
    assert all(s.stray_pixels == 0 and s.blemish_pixels == 0 for s in scores)


def test_a_faint_mark_inside_a_shape_is_a_blemish_and_not_stray():
    """A 2x2 mark inside a red circle, darker red (a mix of red and the blue background: no stray
    pixel), is four blemish pixels; the same mark on the shape's outline is edge blending, none."""
    spec = _scene("circle", "large", ["center"])
    image = _images([spec])[0]
    marked = image.copy()
    marked[60:62, 60:62] = (150, 30, 80)
    assert (score(image, spec).blemish_pixels, score(marked, spec).blemish_pixels) == (0, 4)
    assert score(marked, spec).stray_pixels == 0 and score(marked, spec).kind
    holed = image.copy()
    holed[60:62, 60:62] = image[0, 0]  # the background's color: a hole in the shape, filled, counted
    assert score(holed, spec).blemish_pixels == 4
    ys, xs = np.nonzero(np.abs(image.astype(int) - image[64, 64]).sum(-1) == 0)
    edge = image.copy()
    edge[ys.min(), xs[ys == ys.min()][0]] = (150, 30, 80)  # the top of the circle's outline
    assert score(edge, spec).blemish_pixels == 0


@pytest.mark.parametrize("size", list(SIZES))
def test_every_kind_is_told_from_every_other(size: str):
    specs = [_scene(kind, size, [pos]) for kind in SHAPES for pos in ("top left", "center", "bottom right")]
    for image, spec in zip(_images(specs), specs):
        assert score(image, spec).kind, spec.shapes[0]
        for other in SHAPES:
            if other != spec.shapes[0].kind:  # e.g. a circle scored as a star
                wrong = copy.deepcopy(spec)
                wrong.shapes[0].kind = other
                assert not score(image, wrong).kind, (spec.shapes[0], other)


def test_a_blurred_star_is_a_blob_not_a_star():
    spec = _scene("star", "small", ["center"])
    image = _images([spec])[0].astype(np.float32)
    for _ in range(3):  # a 3x3 box blur, three times: the points melt into the body
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
        image = sum(padded[dy:dy + 128, dx:dx + 128] for dy in range(3) for dx in range(3)) / 9
    image = image.round().astype(np.uint8)
    assert kind_of(blobs(classify(image), "red")[0]) != "star"
    assert not score(image, spec).kind


def test_wrong_counts_fail():
    specs = [s for s in heldout_specs() if is_count(s)]
    for image, spec in zip(_images(specs), specs):
        assert score(image, spec).count
        fewer = copy.deepcopy(spec)
        fewer.shapes.pop()
        assert not score(image, fewer).count, spec.caption
        more = copy.deepcopy(spec)
        more.shapes.append(copy.deepcopy(spec.shapes[0]))
        assert not score(image, more).count, spec.caption


def test_touching_shapes_count_as_one():
    spec = _scene("square", "large", ["left", "center"])
    spec.shapes[1].cx = spec.shapes[0].cx + 30  # squares of side 36: they overlap
    spec.caption = "two large red squares on a blue background"
    assert not score(_images([spec])[0], spec).count

