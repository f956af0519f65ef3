"""TeaCache speed: wall time per image with and without step caching, same process, same weights.

Writes (once) the full-size Z-Image-Turbo layout with random bf16 weights (bench/gpu_baseline.py's
writer), imports it with `ollimg.create.create`, calibrates it in-process
(`ollimg.runtime.teacache.calibrate`, the built-in prompt set of `ollimg calibrate`), then times
prompt -> image (text encode, denoise, decode; PNG excluded) at 1024x1024 for each step count,
uncached, at each --thresholds value and at the threshold that makes the random model reuse each
--reuse fraction of its steps; one warm-up each.

    python bench/teacache.py --work /tmp/zbench --json bench/results/teacache_h200.json
    python bench/teacache.py --work /tmp/zbench-tiny --tiny --size 256 --runs 1   # the same flow on a CPU

Random weights say nothing about quality, and little about how many steps a trained model lets
TeaCache skip: the skip count of each run is printed next to its time, and the time per skipped
step is what carries over. Quality figures come from the shapes model (bench/teacache_quality.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_baseline import PROMPT, sync, write_model  # noqa: E402


def time_runs(pipe, args, steps: int, threshold: float | None) -> dict:
    """Median seconds per image over --runs (after one warm-up), and the steps run and reused."""
    seconds, counts = [], None
    for i in range(args.runs + 1):
        sync()
        start = time.perf_counter()
        result = pipe.generate(PROMPT, width=args.size, height=args.size, steps=steps, guidance=0.0, seed=i,
                               teacache=threshold)
        sync()
        if i:
            seconds.append(time.perf_counter() - start)
            counts = (int(result.timings.get("steps_run", steps)), int(result.timings.get("steps_reused", 0)))
    return {"seconds": round(statistics.median(seconds), 3), "min": round(min(seconds), 3),
            "steps_run": counts[0], "steps_reused": counts[1]}


def threshold_for(pipe, args, steps: int, target: float) -> float:
    """The smallest threshold of a doubling ladder (0.01 .. 100) at which a run reuses at least
    `target` of its steps: random weights skip little at a trained model's thresholds."""
    threshold = 0.01
    while threshold < 100:
        result = pipe.generate(PROMPT, width=args.size, height=args.size, steps=steps, guidance=0.0, seed=0,
                               teacache=threshold)
        if result.timings["steps_reused"] >= target * steps:
            return threshold
        threshold *= 2
    return 100.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch dir: model dir and store go here")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (try the flow on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 30])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5],
                        help="TeaCache thresholds to time (0.3: the recommended one, bench/README.md)")
    parser.add_argument("--reuse", type=float, nargs="+", default=[0.5],
                        help="also time at the threshold that reuses this fraction of steps (the shapes model "
                             "reuses 50 %% at its recommended 0.3)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from ollimg.calibrate import DEFAULT_PROMPTS
    from ollimg.create import create
    from ollimg.manifest import Store
    from ollimg.runtime import load
    from ollimg.runtime.teacache import calibrate

    model_dir, store_dir = args.work / "Z-Image-random", args.work / "store"
    if not (model_dir / "model_index.json").is_file():
        write_model(model_dir, args.tiny, args.device)
    create(Store(store_dir), "zimage-random:bf16", model_dir)
    os.environ.setdefault("OLLIMG_COMPILE", "on")  # compiled from the first run (auto: from the second)
    pipe = load("zimage-random:bf16", backend="torch", device=args.device, dtype=args.dtype, models_dir=store_dir)
    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "size": args.size,
                     "dtype": args.dtype, "runs": args.runs}
    start = time.perf_counter()
    pipe.calibration = calibrate(pipe, DEFAULT_PROMPTS[:4], steps=8)
    results["calibration"] = pipe.calibration.to_json()
    results["calibrate_s"] = round(time.perf_counter() - start, 1)
    print(f"calibrated in {results['calibrate_s']}s: {results['calibration']}", flush=True)
    for steps in args.steps:
        row = {"uncached": time_runs(pipe, args, steps, None)}
        for threshold in args.thresholds:
            row[f"teacache {threshold:g}"] = time_runs(pipe, args, steps, threshold)
        for target in args.reuse:
            threshold = threshold_for(pipe, args, steps, target)
            row[f"teacache {threshold:g} (reuse {target:.0%})"] = time_runs(pipe, args, steps, threshold)
        results[f"{steps} steps"] = row
        for label, r in row.items():
            print(f"{args.size}x{args.size} {steps:>3} steps  {label:<28} {r['seconds']:7.3f} s  "
                  f"(min {r['min']:.3f}; {r['steps_run']} run, {r['steps_reused']} reused)", flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
