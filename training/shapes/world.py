"""The shapes world: its vocabulary, scene specs, captions and the held-out combinations.

Pure Python (no torch, no numpy): `data.py` renders specs, `check.py` scores images against
them. Everything here is deterministic given a `random.Random`.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

SIZE = 128  # image side in pixels

# Named colors, well separated in RGB so that nearest-color classification is unambiguous.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (250, 220, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (255, 140, 0),
    "purple": (130, 40, 170),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond")
SIZES: dict[str, float] = {"small": 11.0, "large": 21.0}  # half extent in pixels
# Each outline's bounding box (u0, u1, v0, v1) in units of the half extent, v pointing down
# (outlines.py draws them; tests/training checks that these boxes are theirs).
EXTENTS: dict[str, tuple[float, float, float, float]] = {
    "circle": (-1.0, 1.0, -1.0, 1.0),
    "square": (-0.85, 0.85, -0.85, 0.85),
    "triangle": (-1.8 / 1.85, 1.8 / 1.85, -1.0, 0.8),
    "star": (-0.9511, 0.9511, -1.0, 0.809),  # sin 72 degrees, cos 36 degrees
    "diamond": (-1.1, 1.1, -1.1, 1.1),
}
GAP = 3.0  # pixels between the bounding boxes of two shapes of one training scene
# 3x3 grid of cells; the caption phrase for each.
POSITIONS: dict[str, str] = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
POSITION_NAMES = tuple(POSITIONS)
CELL_CENTERS = (22.0, 64.0, 106.0)
JITTER = 4.0
COUNT_WORDS = {2: "two", 3: "three"}


@dataclass
class Shape:
    kind: str
    color: str
    size: str
    pos: str
    cx: float
    cy: float


@dataclass
class Spec:
    bg: str
    shapes: list[Shape] = field(default_factory=list)
    caption: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Spec":
        return cls(data["bg"], [Shape(**s) for s in data["shapes"]], data["caption"])


def cell_center(pos: str) -> tuple[float, float]:
    """(cx, cy) of a named cell."""
    i = POSITION_NAMES.index(pos)
    return CELL_CENTERS[i % 3], CELL_CENTERS[i // 3]


def heldout_triples() -> frozenset[tuple[str, str, str]]:
    """The (color, shape, position) triples that never appear in training: one in ten, fixed."""
    triples = [(c, s, p) for c in COLORS for s in SHAPES for p in POSITION_NAMES]
    return frozenset(random.Random(7).sample(triples, len(triples) // 10))


HELDOUT = heldout_triples()


def _place(rng: random.Random, kind: str, color: str, size: str, pos: str) -> Shape:
    cx, cy = cell_center(pos)
    return Shape(kind, color, size, pos, cx + rng.uniform(-JITTER, JITTER), cy + rng.uniform(-JITTER, JITTER))


def _box(s: Shape) -> tuple[float, float, float, float]:
    u0, u1, v0, v1 = EXTENTS[s.kind]
    r = SIZES[s.size]
    return s.cx + u0 * r, s.cx + u1 * r, s.cy + v0 * r, s.cy + v1 * r


def apart(shapes: list[Shape], gap: float = GAP) -> bool:
    """No two shapes' bounding boxes come within `gap` pixels: the shapes never touch."""
    boxes = [_box(s) for s in shapes]
    return all(
        a[0] - gap >= b[1] or b[0] - gap >= a[1] or a[2] - gap >= b[3] or b[2] - gap >= a[3]
        for i, a in enumerate(boxes) for b in boxes[i + 1:]
    )


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _phrase(s: Shape) -> str:
    return f"a {s.size} {s.color} {s.kind} {POSITIONS[s.pos]}"


def _plural(kind: str) -> str:
    return kind + "es" if kind.endswith("s") else kind + "s"


def sample_spec(rng: random.Random, split: str = "train") -> Spec:
    """One random scene. split "train" never contains a held-out triple; "heldout" is one
    single shape whose triple is held out."""
    if split == "heldout":
        color, kind, pos = rng.choice(sorted(HELDOUT))
        bg = rng.choice([c for c in COLORS if c != color])
        shape = _place(rng, kind, color, rng.choice(list(SIZES)), pos)
        return Spec(bg, [shape], f"{_phrase(shape)} on {_a(bg)} background")
    while True:
        spec = _sample_train(rng)
        if all((s.color, s.kind, s.pos) not in HELDOUT for s in spec.shapes):
            return spec


def _sample_train(rng: random.Random) -> Spec:
    """One training scene; its shapes never touch, so that a count in the caption is the count
    a person sees (with jitter, large shapes in neighbouring cells would often overlap)."""
    while True:
        spec = _sample_scene(rng)
        if apart(spec.shapes):
            return spec


def _sample_scene(rng: random.Random) -> Spec:
    bg = rng.choice(list(COLORS))
    colors = [c for c in COLORS if c != bg]
    roll = rng.random()
    if roll < 0.35:  # one shape, fully described
        n = 1
    elif roll < 0.6:  # two or three different shapes, each fully described
        n = rng.choice((2, 3))
    else:  # a count of identical shapes, positions not named
        n = rng.choice((2, 3))
        kind, color, size = rng.choice(SHAPES), rng.choice(colors), rng.choice(list(SIZES))
        shapes = [_place(rng, kind, color, size, p) for p in rng.sample(POSITION_NAMES, n)]
        caption = f"{COUNT_WORDS[n]} {size} {color} {_plural(kind)} on {_a(bg)} background"
        return Spec(bg, shapes, caption)
    cells = rng.sample(POSITION_NAMES, n)
    shapes = [
        _place(rng, rng.choice(SHAPES), rng.choice(colors), rng.choice(list(SIZES)), p) for p in cells
    ]
    phrases = [_phrase(s) for s in shapes]
    body = phrases[0] if n == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return Spec(bg, shapes, f"{body} on {_a(bg)} background")


def corpus() -> list[str]:
    """Every word and phrase shape the captions use (to train the tokenizer)."""
    words = list(COLORS) + list(SHAPES) + [_plural(s) for s in SHAPES] + list(SIZES)
    words += list(POSITIONS.values()) + list(COUNT_WORDS.values())
    words += ["user", "assistant", "system", "\n", "a", "an", "and", "on", "background", "an orange background", "a large red circle at the top left on a blue background"]
    return words


def is_count(spec: Spec) -> bool:
    """A count scene ("two small yellow squares ..."): identical shapes, positions not named."""
    return spec.caption.split(" ", 1)[0] in COUNT_WORDS.values()


def _apart(cells: list[str]) -> bool:
    """No two cells share an edge, so that even two large shapes cannot touch."""
    at = [divmod(POSITION_NAMES.index(p), 3) for p in cells]
    return all(abs(r1 - r2) + abs(c1 - c2) > 1 for i, (r1, c1) in enumerate(at) for r2, c2 in at[i + 1:])


def _apart_cells(rng: random.Random, n: int) -> list[str]:
    while True:
        cells = rng.sample(POSITION_NAMES, n)
        if _apart(cells):
            return cells


def _heldout_count(rng: random.Random, n: int) -> Spec:
    kind, color, size = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES))
    bg = rng.choice([c for c in COLORS if c != color])
    shapes = [_place(rng, kind, color, size, p) for p in _apart_cells(rng, n)]
    return Spec(bg, shapes, f"{COUNT_WORDS[n]} {size} {color} {_plural(kind)} on {_a(bg)} background")


def _heldout_pair(rng: random.Random) -> Spec:
    """A held-out triple and a second shape of another kind and color in a cell apart."""
    color, kind, pos = rng.choice(sorted(HELDOUT))
    while True:
        kind2, color2, pos2 = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(POSITION_NAMES)
        if kind2 != kind and color2 != color and (color2, kind2, pos2) not in HELDOUT and _apart([pos, pos2]):
            break
    bg = rng.choice([c for c in COLORS if c not in (color, color2)])
    a = _place(rng, kind, color, rng.choice(list(SIZES)), pos)
    b = _place(rng, kind2, color2, rng.choice(list(SIZES)), pos2)
    return Spec(bg, [a, b], f"{_phrase(a)} and {_phrase(b)} on {_a(bg)} background")


def heldout_specs() -> list[Spec]:
    """The fixed held-out evaluation set, 160 distinct scenes; prompt i is generated with seed i.
    - 120 single shapes whose (color, shape, position) triple never occurs in training;
    - 20 counts: ten of two and ten of three identical shapes (their captions can occur in
      training: a count caption names no position, so none is held out);
    - 20 pairs: a held-out triple and a second shape of another kind and color.
    Shapes of a count or a pair sit in cells that share no edge, so that they never touch."""
    rng = random.Random(12345)
    specs: dict[str, Spec] = {}
    while len(specs) < 120:
        spec = sample_spec(rng, "heldout")
        specs.setdefault(spec.caption, spec)
    rng = random.Random(54321)
    for make in [lambda: _heldout_count(rng, 2)] * 10 + [lambda: _heldout_count(rng, 3)] * 10 + [lambda: _heldout_pair(rng)] * 20:
        while (spec := make()).caption in specs:
            pass
        specs[spec.caption] = spec
    return list(specs.values())
