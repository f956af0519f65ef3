"""Where the GPU time of a Z-Image generation goes: torch.profiler over one warm generation of a model in
the store (as bench/gpu_baseline.py imports it), kernels grouped by kind, per denoising step, and
for each stage (text encode, denoise, decode) its wall time against the GPU's busy time in it: the
rest is the GPU waiting for the host (launches, Python, synchronisation).

    python bench/profile_step.py --models /tmp/zb/store --model zimage-random:bf16 [--size 1024] [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import re
from collections import defaultdict
from pathlib import Path

import torch

from gpu_baseline import PROMPT  # the speed runs' prompt: the same sequence length, comparable times

KINDS = [  # first match wins: kernel name pattern -> kind
    ("VAE convolutions (and cuDNN's layout copies)", r"fprop_implicit_gemm|nchwToNhwc|nhwcToNchw|conv2d|convolution"),
    ("VAE GroupNorm (statistics and apply)", r"RowwiseMoments|group_norm|GroupNorm|batch_norm"),
    ("triton (fused elementwise/norms)", r"^triton_"),  # before attention: a fused kernel's name lists the ops around it
    ("attention", r"flash|fmha|attention|cudnn.*sdpa"),
    ("gemm", r"gemm|cutlass|sm90_xmma|nvjet|_scaled_mm|matmul|cublas"),
    ("copies and casts", r"copy|cast|Memcpy|memcpy|to_copy"),
    ("elementwise and reductions (eager)", r"elementwise|reduce|vectorized|unrolled|norm"),
]


def marked(components) -> None:
    """Profiler ranges around the pipeline's calls of the text encoder, the DiT and the decoder."""
    for name in ("encode", "transformer", "decode"):
        def call(*args, _inner=getattr(components, name), _name=name, **kwargs):
            with torch.profiler.record_function(f"stage:{_name}"):
                return _inner(*args, **kwargs)
        setattr(components, name, call)


def gpu_work(event) -> bool:
    """A kernel, copy or memset on the GPU: not the GPU-side copy of a `stage:` range, which the
    profiler lists among the CUDA events (counted, they doubled the denoise's "busy" time)."""
    return event.device_type == torch.autograd.DeviceType.CUDA and not event.name.startswith("stage:")


def stages(events) -> list[tuple[str, float, float]]:
    """(stage, wall us, GPU busy us): text encode from its call to the DiT's first, denoise from there
    to the decoder's call, decode its call (which ends in a copy to the host, so a sync)."""
    marks = sorted((e.time_range.start, e.time_range.end, e.name) for e in events if e.name.startswith("stage:"))
    dit = [m for m in marks if m[2] == "stage:transformer"]
    enc = next(m for m in marks if m[2] == "stage:encode")
    dec = next(m for m in marks if m[2] == "stage:decode")
    windows = [("text encode", enc[0], dit[0][0]), ("denoise", dit[0][0], dec[0]), ("decode", dec[0], dec[1])]
    kernels = [(e.time_range.start, e.time_range.end) for e in events if gpu_work(e)]
    out = []
    for stage, a, b in windows:
        busy = sum(max(0, min(end, b) - max(start, a)) for start, end in kernels)
        out.append((stage, b - a, busy))
    return out


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
        pipe.generate(PROMPT, width=args.size, height=args.size, steps=args.steps, guidance=0, seed=seed)
    torch.cuda.synchronize()
    marked(pipe.components)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
        result = pipe.generate(PROMPT, width=args.size, height=args.size, steps=args.steps, guidance=0, seed=3)
        torch.cuda.synchronize()
    kinds: dict[str, float] = defaultdict(float)
    top: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if not gpu_work(event):
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
    print("per stage: wall, GPU busy (kernels clipped to the stage), GPU waiting")
    for stage, wall, busy in stages(prof.events()):
        print(f"  {stage:12s} {wall / 1e3:8.1f} ms  {busy / 1e3:8.1f} ms  {(wall - busy) / 1e3:8.1f} ms")
    print("top kernels:")
    for name, us in sorted(top.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {us / 1e3:8.1f} ms  {name}")


if __name__ == "__main__":
    main()
