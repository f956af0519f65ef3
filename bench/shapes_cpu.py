"""One 128x128 image (PNG encoding excluded) of the shipped shapes model (or --model) at its defaults (8 steps,
guidance 0) on the CPU: ollimg's torch backend, ollimg's MLX backend (if mlx imports) and
diffusers' ZImagePipeline, measured in the same run, interleaved; plus both backends in a runtime
process, as the server runs them (PNG encoding and the pipe included there). Median (and min) of --runs after one warm-up each.

    python bench/shapes_cpu.py --runs 9 --json bench/results/shapes_cpu.json
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


def interleaved(paths: dict, runs: int) -> dict[str, dict[str, float]]:
    """One warm-up each, then `runs` rounds running every path once, so that load from other
    processes falls on all of them alike."""
    for fn in paths.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(runs):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"median": round(statistics.median(t), 3), "min": round(min(t), 3)} for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--model", default=str(builtin_models()["shapes"]), help="a model directory (default: the shipped one)")
    args = parser.parse_args()
    model = args.model
    figures = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "load_average_before": os.getloadavg()}

    from ollimg.runtime import load

    from diffusers import ZImagePipeline

    ours = load(model, backend="torch", device="cpu")
    paths = {"ollimg torch": lambda: ours.generate(PROMPT, seed=0)}
    try:
        mlx = load(model, backend="mlx")
        paths["ollimg mlx"] = lambda: mlx.generate(PROMPT, seed=0)
    except Exception as exc:  # a bench edge: report why MLX was not measured
        figures["ollimg mlx"] = f"not measured: {exc}"
    # What the server runs: one runtime process per model (PNG encoding and the pipe included).
    # An MLX runtime process has no torch loaded, so it gets the system's OpenBLAS (mlx_blas.py).
    from ollimg.runtime.process import RuntimeProcess
    from ollimg.runtime.request import GenerateRequest

    request = GenerateRequest(prompt=PROMPT, width=128, height=128, seed=0)
    runtimes = []
    for backend in ("torch", "mlx"):
        try:
            rt = RuntimeProcess(model, backend=backend, device="cpu")
            rt.start(300)
        except Exception as exc:  # a bench edge: report why it was not measured
            figures[f"ollimg {backend} runtime process"] = f"not measured: {exc}"
            continue
        runtimes.append(rt)
        paths[f"ollimg {backend} runtime process"] = lambda rt=rt: rt.generate(request)
    ref = ZImagePipeline.from_pretrained(model, dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    paths["diffusers"] = lambda: ref(PROMPT, height=128, width=128, num_inference_steps=8, guidance_scale=0.0,
                                     generator=torch.Generator().manual_seed(0))
    figures.update(interleaved(paths, args.runs))
    figures["load_average_after"] = os.getloadavg()  # other processes on the machine skew CPU figures
    for rt in runtimes:
        rt.stop()
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
