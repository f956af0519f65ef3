"""CPU timings of the MLX backend next to the torch backend, in one run, on the same models.

    python bench/mlx_vs_torch.py [--repeats 5] [--model PATH_OR_NAME ...] [--variants torch,mlx,mlx+compile]

For each model (the tiny fixture model, built here, at 64x64 and 4 steps; then any --model and
`ollimg/builtin/shapes` when it exists, at their own default size and steps) it loads the torch
backend and the MLX backend (eager, and with the denoising step under mx.compile) in fp32 on the
CPU, warms each up once (mx.compile traces and JIT-compiles there), then runs `generate` --repeats times, interleaving the backends so that
machine load hits them alike, and prints min and median seconds per stage. A last table times
one linear layer with fp8 weights three ways on MLX (dequantized once to bf16, dequantized per
call, MLX's 8-bit quantized matmul) to back the choice the MLX backend makes for fp8 models.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "fixtures")]

STAGES = ("text_encode", "denoise", "decode", "total")


def load_variants(model: str, names: list[str]) -> dict:
    from ollimg.runtime import load

    variants = {}
    for name in names:
        pipe = load(model, backend=name.split("+")[0], device="cpu", dtype="float32")
        if name == "mlx+compile":
            pipe.components.modules["transformer"].compiled = True
        variants[name] = pipe
    return variants


def time_model(label: str, model: str, args, size: int | None = None, steps: int | None = None) -> None:
    variants = load_variants(model, args.variants.split(","))
    defaults = next(iter(variants.values())).defaults
    size, steps = size or defaults.width, steps or defaults.steps
    kwargs = dict(width=size, height=size, steps=steps, seed=1, guidance=0.0)
    times: dict[str, dict[str, list[float]]] = {name: {s: [] for s in STAGES} for name in variants}
    warm = {}
    for name, pipe in variants.items():
        start = time.perf_counter()
        pipe.generate("a red circle on a blue background", **kwargs)
        warm[name] = time.perf_counter() - start
    for _ in range(args.repeats):
        for name, pipe in variants.items():
            result = pipe.generate("a red circle on a blue background", **kwargs)
            for stage in STAGES:
                times[name][stage].append(result.timings[stage])
    print(f"\n{label}: {size}x{size}, {steps} steps, guidance 0, fp32, CPU, "
          f"{args.repeats} runs each (min / median seconds)")
    print(f"| backend | first call | " + " | ".join(STAGES) + " |")
    print("|---|---|" + "---|" * len(STAGES))
    for name in variants:
        cells = [f"{min(v):.3f} / {statistics.median(v):.3f}" for v in times[name].values()]
        print(f"| {name} | {warm[name]:.2f} | " + " | ".join(cells) + " |")


def time_fp8_linear(repeats: int) -> None:
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng(0)
    tokens, n_in, n_out = 256, 1024, 1024
    x = mx.array(rng.standard_normal((tokens, n_in), dtype=np.float32)).astype(mx.bfloat16)
    w = mx.array(rng.standard_normal((n_out, n_in), dtype=np.float32) * 0.05)
    scale = mx.max(mx.abs(w), axis=1) / 448.0
    w8 = mx.to_fp8(w / scale[:, None])  # what `create --quantize fp8` stores: e4m3 + per-row scale
    dequantized = (mx.from_fp8(w8, dtype=mx.float32) * scale[:, None]).astype(mx.bfloat16)
    wq, qs, qb = mx.quantize(dequantized, group_size=64, bits=8)
    mx.eval(x, w8, scale, dequantized, wq, qs, qb)
    ways = {
        "bf16 weight, dequantized at load (what the backend does)": lambda: x @ dequantized.T,
        "fp8 weight, dequantized per call": lambda: x @ (mx.from_fp8(w8, dtype=mx.float32)
                                                         * scale[:, None]).astype(mx.bfloat16).T,
        "mx.quantized_matmul, 8-bit affine, group 64": lambda: mx.quantized_matmul(x, wq, qs, qb, transpose=True,
                                                                                   group_size=64, bits=8),
    }
    print(f"\nfp8 linear on MLX (CPU): x bf16 [{tokens}, {n_in}] @ W [{n_out}, {n_in}]^T, "
          f"{repeats * 4} runs each (min / median ms); weight bytes")
    print("| way | time | weight bytes |")
    print("|---|---|---|")
    sizes = {0: dequantized.nbytes, 1: w8.nbytes + scale.nbytes, 2: wq.nbytes + qs.nbytes + qb.nbytes}
    for i, (name, fn) in enumerate(ways.items()):
        mx.eval(fn())
        runs = []
        for _ in range(repeats * 4):
            start = time.perf_counter()
            mx.eval(fn())
            runs.append((time.perf_counter() - start) * 1000)
        print(f"| {name} | {min(runs):.2f} / {statistics.median(runs):.2f} | {sizes[i]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default="torch,mlx,mlx+compile")
    parser.add_argument("--model", action="append", default=[], help="a store name or diffusers directory")
    args = parser.parse_args()

    import mlx.core as mx
    import torch

    from make_tiny_zimage import make_tiny_zimage

    print(f"{platform.platform()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), mlx {mx.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny_zimage(Path(tmp) / "tiny", dtype="float32", seed=0)
        time_model("tiny fixture model", str(tiny), args, size=64, steps=4)
        shapes = ROOT / "ollimg" / "builtin" / "shapes"
        given = {str(Path(m).resolve()) for m in args.model}
        models = args.model + ([str(shapes)] if shapes.is_dir() and str(shapes) not in given else [])
        for model in models:
            time_model(model, model, args)
    time_fp8_linear(args.repeats)


if __name__ == "__main__":
    main()
