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
    bg = rng.choice(list(COLORS))
    colors = [c for c in COLORS if c != bg]
    roll = rng.random()
    if roll < 0.5:  # one shape, fully described
        n = 1
    elif roll < 0.8:  # two or three different shapes, each fully described
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


def heldout_specs(n: int = 120) -> list[Spec]:
    """The fixed held-out evaluation set: n single-shape scenes whose (color, shape, position)
    triple never occurs in training. Prompt i is generated with seed i."""
    rng = random.Random(12345)
    specs: dict[str, Spec] = {}
    while len(specs) < n:
        spec = sample_spec(rng, "heldout")
        specs.setdefault(spec.caption, spec)
    return list(specs.values())
