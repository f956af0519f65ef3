"""The README's picture of the built-in shapes model: PROMPTS, each at seed 1, through our runtime
(torch, CPU, the model's defaults), four to a row.

    python -m training.shapes.grid --out docs/shapes-grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ollimg.builtin import builtin_models

PROMPTS = (
    "a large red circle at the top left on a blue background",
    "a small yellow star in the center on a purple background",
    "a large white triangle at the bottom right on a green background",
    "two small yellow squares on a black background",
    "a large orange diamond on the right on a white background",
    "a large blue square at the top and a small red circle at the bottom on a yellow background",
    "three small white stars on a red background",
    "a large black circle at the bottom left on an orange background",
)
PER_ROW = 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("docs/shapes-grid.png"))
    parser.add_argument("--model", default=str(builtin_models()["shapes"]))
    args = parser.parse_args()
    from PIL import Image

    from ollimg.runtime import load

    pipe = load(args.model, backend="torch", device="cpu")
    images = [np.asarray(pipe.generate(p, seed=1).images[0].convert("RGB")) for p in PROMPTS]
    rows = [np.concatenate(images[i:i + PER_ROW], axis=1) for i in range(0, len(images), PER_ROW)]
    Image.fromarray(np.concatenate(rows)).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
