"""One 128x128 image (PNG encoding excluded) of the shipped shapes model at its defaults (8 steps, guidance 0) on the CPU:
ollimg's torch backend, ollimg's MLX backend (if mlx imports) and diffusers' ZImagePipeline,
measured in the same run. Median of --runs after one warm-up each.

    python bench/shapes_cpu.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from ollimg.builtin import builtin_models

PROMPT = "a large red circle at the top left on a blue background"


def median_seconds(fn, runs: int) -> dict[str, float]:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median": round(statistics.median(times), 3), "min": round(min(times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model = str(builtin_models()["shapes"])
    figures = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "load_average_before": os.getloadavg()}

    from ollimg.runtime import load

    ours = load(model, backend="torch", device="cpu")
    figures["ollimg torch"] = median_seconds(lambda: ours.generate(PROMPT, seed=0), args.runs)
    try:
        mlx = load(model, backend="mlx")
        figures["ollimg mlx"] = median_seconds(lambda: mlx.generate(PROMPT, seed=0), args.runs)
    except Exception as exc:  # a bench edge: report why MLX was not measured
        figures["ollimg mlx"] = f"not measured: {exc}"

    from diffusers import ZImagePipeline

    ref = ZImagePipeline.from_pretrained(model, dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    gen = lambda: ref(PROMPT, height=128, width=128, num_inference_steps=8, guidance_scale=0.0,  # noqa: E731
                      generator=torch.Generator().manual_seed(0))
    figures["diffusers"] = median_seconds(gen, args.runs)
    figures["load_average_after"] = os.getloadavg()  # other processes on the machine skew CPU figures
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
