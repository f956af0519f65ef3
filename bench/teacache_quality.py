"""TeaCache quality on the shipped shapes model (CPU, torch): calibrate on training-split prompts,
then generate held-out prompts (training/shapes/world.py, prompt i with seed i) uncached and at
each threshold, and compare: the fraction of skipped steps, the mean and 99th-percentile absolute
pixel difference from the uncached image (0-255, over every channel of every image) and the
shapes checker's five scores (training/shapes/check.py: background, color, position, kind,
count).

    PYTHONPATH=. python bench/teacache_quality.py --prompts 120 --json bench/results/teacache_quality_shapes.json
    PYTHONPATH=. python bench/teacache_quality.py --prompts 48 --steps 30 --json bench/results/teacache_quality_shapes_30.json

Random-weight models say nothing about quality; these figures come from the trained shapes model only.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from ollimg.builtin import builtin_models
from training.shapes.check import score, summarize
from training.shapes.world import heldout_specs, sample_spec

THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2)
BATCH = 16


def calibration_prompts(n: int) -> list[str]:
    """Training-split captions (what the model knows), seeded."""
    rng = random.Random(7)
    return [sample_spec(rng, "train").caption for _ in range(n)]


def generate(pipe, specs, threshold: float | None, steps: int | None) -> tuple[list[np.ndarray], float]:
    """The images of `specs` (prompt i with seed i) and the fraction of steps that reused the cache."""
    images, reused, total = [], 0.0, 0.0
    for start in range(0, len(specs), BATCH):
        chunk = specs[start:start + BATCH]
        result = pipe.generate([s.caption for s in chunk], seed=start, steps=steps, teacache=threshold)
        images += [np.asarray(im.convert("RGB")) for im in result.images]
        reused += result.timings.get("steps_reused", 0.0)
        total += result.steps
    return images, reused / total


def measure(pipe, specs, thresholds, steps: int | None) -> list[dict]:
    base, _ = generate(pipe, specs, None, steps)
    rows = [{"threshold": None, "skipped": 0.0, "mean_diff": 0.0, "p99_diff": 0.0,
             **summarize([score(im, s) for im, s in zip(base, specs)])}]
    for t in thresholds:
        images, skipped = generate(pipe, specs, t, steps)
        diff = np.abs(np.stack(images).astype(np.int16) - np.stack(base).astype(np.int16))
        rows.append({"threshold": t, "skipped": round(skipped, 4), "mean_diff": round(float(diff.mean()), 3),
                     "p99_diff": float(np.percentile(diff, 99)),
                     **summarize([score(im, s) for im, s in zip(images, specs)])})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=48, help="held-out prompts to generate per threshold")
    parser.add_argument("--calibration-prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's (8)")
    parser.add_argument("--thresholds", default=None, help="comma-separated (default: %s)" % ",".join(map(str, THRESHOLDS)))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch

    from ollimg.runtime import load
    from ollimg.runtime.teacache import calibrate

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load(str(builtin_models()["shapes"]), backend="torch", device="cpu")
    start = time.perf_counter()
    pipe.calibration = calibrate(pipe, calibration_prompts(args.calibration_prompts), args.steps)
    print("calibration", pipe.calibration.to_json(), flush=True)
    thresholds = THRESHOLDS if args.thresholds is None else tuple(float(t) for t in args.thresholds.split(","))
    rows = measure(pipe, heldout_specs()[:args.prompts], thresholds, args.steps)
    figures = {"model": "shapes (builtin)", "backend": "torch CPU float32", "date": time.strftime("%Y-%m-%d"),
               "steps": args.steps or pipe.defaults.steps, "heldout_prompts": args.prompts,
               "calibration": pipe.calibration.to_json(), "rows": rows,
               "seconds": round(time.perf_counter() - start, 1)}
    print(f"{'threshold':>9} {'skipped':>7} {'mean':>6} {'p99':>5} {'bg':>5} {'color':>5} {'pos':>5} {'kind':>5} {'count':>5}")
    for r in rows:
        t = "off" if r["threshold"] is None else f"{r['threshold']:g}"
        print(f"{t:>9} {r['skipped']:7.1%} {r['mean_diff']:6.2f} {r['p99_diff']:5.0f} {r['background']:5.2f} "
              f"{r['color']:5.2f} {r['position']:5.2f} {r['kind']:5.2f} {r['count']:5.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
