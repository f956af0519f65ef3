"""Which VAE decode is fastest on this GPU: the runtime's decode of one latent (VAE, uint8 on the
device, copy to the host) against variants that are not in the runtime, each checked against it.

The 2026-12-03 profile put the 1024x1024 decode at 51 ms of wall time for ~31 ms of GPU kernels
(8.5 of them cuDNN's NCHW<->NHWC copies around the convolutions): the rest is the GPU waiting for
the host's launches. The variants, each from the same weights and latent:
- channels_last: the decoder's weights and input in NHWC (cuDNN's native layout: no layout copies);
- graph: the whole decode (VAE and the uint8 conversion) captured once as a CUDA graph for this
  shape and replayed (no launches from Python), alone and with channels_last;
- compiled: torch.compile of the decoder for this shape (fuses GroupNorm, SiLU and the residuals;
  its compile time is reported), with and without CUDA graphs (mode "reduce-overhead").
Per variant: median wall time of the call to host pixels, GPU time by CUDA events, the largest
pixel difference from the runtime's output and how many values differ, and the GPU memory it
holds beyond the runtime's (a graph keeps its own pool).

    python bench/decode_variants.py --models /tmp/zb/store --model zimage-random:bf16 [--size 1024] [--runs 10]
    python bench/decode_variants.py --models DIR --model tiny --device cpu --size 64   (a smoke run: no graphs)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def to_pixels(vae, config, dtype):
    """The runtime's decode (ollimg/runtime/models/zimage/torch/build.py) on a given decoder module."""
    def decode(latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(dtype) / config.scaling_factor + config.shift_factor
        pixels = vae.decode(z).float()
        return ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return decode


def channels_last(vae):
    nhwc = copy.deepcopy(vae).to(memory_format=torch.channels_last)
    inner = nhwc.decode
    nhwc.decode = lambda z: inner(z.contiguous(memory_format=torch.channels_last))
    return nhwc


def graphed(decode, latents: torch.Tensor):
    """decode captured as one CUDA graph for latents of this shape; the call copies its input in and
    replays."""
    static = latents.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the capture (cuDNN's algorithm choice, the allocator)
            decode(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode(static)

    def replay(x: torch.Tensor) -> torch.Tensor:
        static.copy_(x)
        graph.replay()
        return out
    return replay


def timed(call, latents, runs: int, cuda: bool) -> dict:
    walls, gpus, out = [], [], None
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        start = time.perf_counter()
        out = call(latents).cpu().numpy()
        walls.append(time.perf_counter() - start)
        if cuda:
            end.record()
            end.synchronize()
            gpus.append(begin.elapsed_time(end) / 1e3)
    return {"wall_s": statistics.median(walls), "gpu_s": statistics.median(gpus) if gpus else None, "pixels": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--model", default="zimage-random:bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("OLLIMG_COMPILE", "off")  # the DiT is not timed here
    from ollimg.runtime import load

    cuda = args.device == "cuda"
    pipe = load(args.model, backend="torch", device=args.device, models_dir=args.models)
    vae = pipe.components.modules["vae"]
    config, dtype = vae.config, next(vae.parameters()).dtype
    g = torch.Generator().manual_seed(0)
    cell = args.size // config.scale
    latents = torch.randn(1, config.latent_channels, cell, cell, generator=g).to(args.device)

    def memory() -> int:
        return torch.cuda.memory_allocated() if cuda else 0

    variants = {"runtime": lambda: lambda z: torch.from_numpy(pipe.components.decode(z))}
    variants["channels_last"] = lambda: to_pixels(channels_last(vae), config, dtype)
    if cuda:
        variants["graph"] = lambda: graphed(to_pixels(vae, config, dtype), latents)
        variants["graph, channels_last"] = lambda: graphed(to_pixels(channels_last(vae), config, dtype), latents)
    variants["compiled"] = lambda: torch.compile(to_pixels(vae, config, dtype), dynamic=False)
    if cuda:
        variants["compiled, CUDA graphs"] = lambda: torch.compile(to_pixels(vae, config, dtype), dynamic=False,
                                                                  mode="reduce-overhead")
    results, reference = {}, None
    for name, make in variants.items():
        before = memory()
        with torch.inference_mode():
            start = time.perf_counter()
            call = make()
            first = timed(call, latents, 1, cuda)  # a compile or capture happens here
            setup = time.perf_counter() - start
            row = timed(call, latents, args.runs, cuda)
        pixels = row.pop("pixels")
        if reference is None:
            reference = pixels
        diff = np.abs(pixels.astype(np.int16) - reference.astype(np.int16))
        row.update(first_call_s=setup, first_wall_s=first["wall_s"], max_pixel_diff=int(diff.max()),
                   values_differing=float((diff > 0).mean()), held_gib=(memory() - before) / 2**30)
        results[name] = row
        gpu = f"{row['gpu_s'] * 1e3:7.1f} ms GPU" if row["gpu_s"] is not None else ""
        print(f"{name:24s} {row['wall_s'] * 1e3:7.1f} ms wall {gpu}  first call {setup:6.2f} s  "
              f"max diff {row['max_pixel_diff']} ({row['values_differing']:.2%} differ)  holds {row['held_gib']:.2f} GiB",
              flush=True)
        del call
    info = {"model": args.model, "size": args.size, "runs": args.runs, "device": args.device,
            "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None, "variants": results}
    if args.json:
        args.json.write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
