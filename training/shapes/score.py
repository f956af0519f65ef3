"""Scores a shapes model directory on the held-out set (world.heldout_specs: 160 prompts, prompt j
with seed j) through our runtime at the model's defaults, with the checker's five scores per group
(check.figures). The quality test (tests/quality/test_shapes_quality.py) runs the same.

    python -m training.shapes.score MODEL_DIR [--backend torch|mlx] [--grid grid.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.shapes.check import figures
from training.shapes.world import heldout_specs

BATCH = 16  # prompts per generate call (the runtime's per-request limit)


def heldout_images(model_dir: Path, backend: str = "torch") -> list[np.ndarray]:
    from ollimg.runtime import load

    pipe = load(str(model_dir), backend=backend, device="cpu")
    specs = heldout_specs()
    images = []
    for start in range(0, len(specs), BATCH):
        chunk = specs[start:start + BATCH]
        result = pipe.generate([s.caption for s in chunk], seed=start)  # prompt j gets seed j
        images += [np.asarray(im.convert("RGB")) for im in result.images]
    return images


def heldout_grid(images: list[np.ndarray]):
    """Eight singles, then the ten counts, then the pairs, eight to a row (a PIL image)."""
    from PIL import Image

    rows = [images[r * 8:(r + 1) * 8] for r in (0, 1, 15, 16, 17, 18, 19)]
    return Image.fromarray(np.concatenate([np.concatenate(r, axis=1) for r in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--grid", type=Path, help="also save the held-out grid (singles, counts, pairs) here")
    args = parser.parse_args()
    images = heldout_images(args.model, args.backend)
    print(json.dumps(figures(images, heldout_specs()), indent=1))
    if args.grid:
        heldout_grid(images).save(args.grid)


if __name__ == "__main__":
    main()
