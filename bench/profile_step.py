"""Where the GPU time of a Z-Image generation goes: torch.profiler over one warm generation of a model in
the store (as bench/gpu_baseline.py imports it), kernels grouped by kind, per denoising step.

    python bench/profile_step.py --models /tmp/zb/store --model zimage-random:bf16 [--size 1024] [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import re
from collections import defaultdict
from pathlib import Path

import torch

KINDS = [  # first match wins: kernel name pattern -> kind
    ("VAE convolutions (and cuDNN's layout copies)", r"fprop_implicit_gemm|nchwToNhwc|nhwcToNchw|conv2d|convolution"),
    ("VAE GroupNorm (statistics and apply)", r"RowwiseMoments|group_norm|GroupNorm|batch_norm"),
    ("attention", r"flash|fmha|attention|cudnn.*sdpa"),
    ("gemm", r"gemm|cutlass|sm90_xmma|nvjet|_scaled_mm|matmul|cublas"),
    ("triton (fused elementwise/norms)", r"^triton_"),
    ("copies and casts", r"copy|cast|Memcpy|memcpy|to_copy"),
    ("elementwise and reductions (eager)", r"elementwise|reduce|vectorized|unrolled|norm"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--model", default="zimage-random:bf16")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    from ollimg.runtime import load

    os.environ.setdefault("OLLIMG_COMPILE", "on")  # compiled from the first warm-up run (auto: from the second)
    pipe = load(args.model, backend="torch", device="cuda", dtype="bfloat16", models_dir=args.models)
    for seed in range(2):  # compile and warm up
        pipe.generate("a lighthouse at dusk", width=args.size, height=args.size, steps=args.steps, guidance=0, seed=seed)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
        result = pipe.generate("a lighthouse at dusk", width=args.size, height=args.size, steps=args.steps, guidance=0, seed=3)
        torch.cuda.synchronize()
    kinds: dict[str, float] = defaultdict(float)
    top: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
        kind = next((k for k, pattern in KINDS if re.search(pattern, event.name, re.I)), "other")
        kinds[kind] += us
        top[event.name[:90]] += us
    gpu = sum(kinds.values())
    print(f"timings: {result.timings}")
    print(f"GPU kernel time {gpu / 1e3:.1f} ms for the whole generation; denoise wall {result.timings['denoise'] * 1e3:.1f} ms")
    for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:46s} {us / 1e3:8.1f} ms  {us / gpu:6.1%}  ({us / 1e3 / args.steps:.1f} ms per step)")
    print("top kernels:")
    for name, us in sorted(top.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {us / 1e3:8.1f} ms  {name}")


if __name__ == "__main__":
    main()
