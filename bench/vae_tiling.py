"""Large images through the VAE: ollimg's strips in lockstep against the whole-image decode and
encode, next to diffusers' tiled decode (independent tiles, blended), on the trained shapes VAE;
and the peak memory (RSS, torch on the CPU) of a large decode and encode, whole and in strips.

Quality: the shipped shapes model's final latents (4 prompts, seed 3) decoded whole and in
strips/tiles; pixel differences in levels of 255. Memory: a 1536x1536 decode and encode (192
latent cells a side: strips by default), each in a fresh process, peak RSS over the RSS after
loading.

    python bench/vae_tiling.py            # both
    python bench/vae_tiling.py quality
    python bench/vae_tiling.py memory
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import numpy as np
import torch

from ollimg.builtin import builtin_models
from ollimg.runtime import load

PROMPTS = ["a large red circle at the top left on a blue background", "two small yellow squares on a black background",
           "a large white triangle at the bottom right on a green background", "three small white stars on a red background"]
MEMORY_SIDE = 1536


def stats(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a.astype(int) - b.astype(int))
    return f"mean {d.mean():.3f}  p99 {np.percentile(d, 99):.0f}  max {d.max()}"


def px(x: torch.Tensor) -> np.ndarray:
    return ((x / 2 + 0.5).clamp(0, 1) * 255).round().numpy()


def quality() -> None:
    from diffusers import AutoencoderKL

    model = builtin_models()["shapes"]
    ours = load(str(model), backend="torch", device="cpu", dtype="float32")
    vae = ours.components.modules["vae"]
    ref = AutoencoderKL.from_pretrained(model / "vae").eval()
    c = ours.config.vae
    for size, tile in ((256, 16), (512, 32)):
        z = torch.from_numpy(ours.generate(PROMPTS, width=size, height=size, seed=3).latents) / c.scaling_factor
        z = z + c.shift_factor
        with torch.inference_mode():
            whole = vae(z)
            vae.tile, vae.strip = tile, 1 << 20  # strips of 1M values: ~10 rows at full resolution
            striped = vae.decode(z)
            vae.tile, vae.strip = 128, 1 << 25
            ref.disable_tiling()
            ref_whole = ref.decode(z).sample
            ref.enable_tiling()
            ref.tile_sample_min_size, ref.tile_latent_min_size, ref.tile_overlap_factor = tile * 8, tile, 0.25
            ref_tiled = ref.decode(z).sample
        print(f"{size}x{size} (diffusers: tiles of {tile} latent cells, overlap 1/4):")
        print(f"  ollimg strips vs whole:    {stats(px(whole), px(striped))}")
        print(f"  ollimg strips vs diffusers whole: {stats(px(ref_whole), px(striped))}")
        print(f"  diffusers tiled vs whole:  {stats(px(ref_whole), px(ref_tiled))}")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def one(what: str, mode: str) -> None:
    """In a fresh process: one decode or encode, whole or in strips; prints its peak RSS over the loaded baseline."""
    pipe = load(str(builtin_models()["shapes"]), backend="torch", device="cpu", dtype="float32")
    cells = MEMORY_SIDE // 8
    with torch.inference_mode():
        if what == "encode":
            pipe.components.encode_image(np.zeros((1, 3, 16, 16), np.float32))
            module = pipe.components.modules["vae_encoder"]
            x = torch.rand(1, 3, MEMORY_SIDE, MEMORY_SIDE) * 2 - 1
            run = lambda: module.moments(x)  # noqa: E731
        else:
            module = pipe.components.modules["vae"]
            x = torch.randn(1, 16, cells, cells)
            run = lambda: module.decode(x)  # noqa: E731
        if mode == "whole":
            module.tile = cells  # no strips
        base = rss_mib()
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  {what:6s} {mode:6s}: peak {peak - base:7.0f} MiB over the loaded {base:.0f} MiB, {seconds:.1f} s")


def memory() -> None:
    print(f"{MEMORY_SIDE}x{MEMORY_SIDE}, torch fp32 on the CPU, one process each:")
    for what in ("decode", "encode"):
        for mode in ("whole", "strips"):
            subprocess.run([sys.executable, __file__, "one", what, mode], check=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["one"]:
        one(args[1], args[2])
    else:
        if not args or "quality" in args:
            quality()
        if not args or "memory" in args:
            memory()
