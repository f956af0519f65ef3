"""PNG encoding: ollimg's writer (ollimg/runtime/png.py: Up filter, deflate on parallel threads;
its default looks for runs only, and at level 1) against Pillow's default (adaptive filters,
level 6), time and size, on a photo-like 1024x1024 image (smooth colour fields plus sensor-like
noise), uniform noise (what a model with random weights draws), the README's shapes grid and a
screenshot of the web page.

    python bench/png_encode.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ollimg.runtime import png

ROOT = Path(__file__).resolve().parent.parent


def photo_like(size: int = 1024) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    fields = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x * y), np.sin(9 * x * y + 1)], -1) * 90 + 128
    return np.clip(fields + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)


def best(fn, rounds: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        size = len(fn())
        times.append(time.perf_counter() - start)
    return min(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    images = {"photo-like 1024x1024": photo_like(),
              "noise 1024x1024": rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8),
              "shapes grid": np.asarray(Image.open(ROOT / "docs" / "shapes-grid.png").convert("RGB")),
              "web page screenshot": np.asarray(Image.open(ROOT / "docs" / "web-gallery.png").convert("RGB"))}
    print(f"{os.cpu_count()} CPUs; best of {args.rounds}")
    print("| image | Pillow level 6 | ollimg level 1 | ollimg default (runs) | default/Pillow time | default/Pillow size "
          "| default/level 1 time | default/level 1 size |\n|---|---|---|---|---|---|---|---|")
    for label, rgb in images.items():
        def pillow() -> bytes:
            out = io.BytesIO()
            Image.fromarray(rgb).save(out, "PNG", compress_level=6)
            return out.getvalue()

        t_pil, s_pil = best(pillow, args.rounds)
        t_one, s_one = best(lambda: png.encode(rgb, level=1), args.rounds)
        t_run, s_run = best(lambda: png.encode(rgb), args.rounds)
        print(f"| {label} | {t_pil * 1e3:.0f} ms, {s_pil / 1024:.0f} KiB | {t_one * 1e3:.0f} ms, {s_one / 1024:.0f} KiB "
              f"| {t_run * 1e3:.0f} ms, {s_run / 1024:.0f} KiB | {t_run / t_pil:.2f} | {s_run / s_pil:.3f} "
              f"| {t_run / t_one:.2f} | {s_run / s_one:.3f} |")

if __name__ == "__main__":
    main()
