"""A fresh process's start on the CPU, to its first image: `load` (imports included) and the first
generate, for ollimg's torch runtime and diffusers' ZImagePipeline (peer) on the same model,
interleaved, in fresh processes. Default model: the shipped shapes model at its defaults.

    python bench/cpu_start.py [--model DIR] [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

OURS = """
import sys, time
t0 = float(sys.argv[2])
from ollimg.runtime import load
pipe = load(sys.argv[1], backend="torch", device="cpu")
t1 = time.time()
pipe.generate("a large red circle at the top left on a blue background", seed=0)
print(t1 - t0, time.time() - t0)
"""
PEER = """
import sys, time
t0 = float(sys.argv[2])
import torch
from diffusers import ZImagePipeline
pipe = ZImagePipeline.from_pretrained(sys.argv[1], dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
t1 = time.time()
pipe("a large red circle at the top left on a blue background", height=128, width=128, num_inference_steps=8,
     guidance_scale=0.0, generator=torch.Generator().manual_seed(0))
print(t1 - t0, time.time() - t0)
"""


def start(code: str, model: str) -> tuple[float, float]:
    run = subprocess.run([sys.executable, "-c", code, model, str(time.time())], capture_output=True, text=True,
                         check=True)
    loaded, first = map(float, run.stdout.split())
    return loaded, first


def main() -> None:
    from ollimg.builtin import builtin_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(builtin_models()["shapes"]))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float]]] = {"ollimg torch": [], "diffusers": []}
    for _ in range(args.runs + 1):  # the first round warms the page cache and is dropped
        for name, code in (("ollimg torch", OURS), ("diffusers", PEER)):
            times[name].append(start(code, args.model))
    figures = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
               "load_average": os.getloadavg()}
    for name, runs in times.items():
        runs = runs[1:]
        figures[name] = {"loaded": round(statistics.median(r[0] for r in runs), 2),
                         "first image": round(statistics.median(r[1] for r in runs), 2),
                         "first image min": round(min(r[1] for r in runs), 2)}
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
