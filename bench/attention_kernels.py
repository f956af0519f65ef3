"""The attention kernels one Z-Image step runs, alone, at its shapes: PyTorch's SDPA as the runtime
calls it (cuDNN's flash attention on Hopper), each SDPA backend forced, and FlashAttention 4
(`flash-attn-4`'s CuTe kernels) through the runtime's op, if installed. Per kernel: time per call,
TFLOP/s, the largest difference from float32 math, and FA4's first call (its JIT compile, or a
load from its disk cache).

    python bench/attention_kernels.py [--heads 30] [--head-dim 128] [--lengths 4288 4096] [--json F]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ollimg.runtime import torch_attention, torch_compile


def timed(fn, runs: int) -> float:
    """Seconds per call: CUDA events around `runs` calls after three warm-up calls."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(runs):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=30)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4288, 4096])  # the main layers', the image refiners'
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}, cuDNN {torch.backends.cudnn.version()}")
    started = time.perf_counter()
    flash = torch_attention.import_flash(torch_compile.flash_cache_dir()) and torch_attention.use_flash(device)
    print(f"FlashAttention 4: {'on' if flash else 'not available'} (import {time.perf_counter() - started:.2f} s)")
    rows = []
    for length in args.lengths:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, length, args.heads, args.head_dim, device=device, dtype=torch.bfloat16)
                   for _ in range(3))  # (B, L, H, D), as the runtime holds them
        ref = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
        flops = 4 * length * length * args.heads * args.head_dim

        def sdpa(backend=None):
            if backend is None:
                return lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            def call():
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return call

        kernels = {"sdpa (runtime default)": sdpa(), "sdpa cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
                   "sdpa flash (FA2)": sdpa(SDPBackend.FLASH_ATTENTION),
                   "sdpa efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION)}
        if flash:
            started = time.perf_counter()
            torch.ops.ollimg.flash_attention(q, k, v)
            torch.cuda.synchronize()
            print(f"L={length}: FA4's first call {time.perf_counter() - started:.2f} s")
            kernels["flash-attn-4"] = lambda: torch.ops.ollimg.flash_attention(q, k, v).transpose(1, 2)
        for name, fn in kernels.items():
            try:
                out = fn().transpose(1, 2)  # (B, L, H, D)
                seconds = timed(fn, args.runs)
            except RuntimeError as error:
                print(f"L={length} {name}: {str(error).splitlines()[0]}")
                continue
            diff = (out.float() - ref).abs().max().item()
            row = {"length": length, "kernel": name, "ms": seconds * 1e3, "tflops": flops / seconds / 1e12,
                   "max_abs_diff_vs_fp32": diff}
            rows.append(row)
            print(f"L={length} {name:24s} {seconds * 1e3:7.3f} ms  {row['tflops']:6.1f} TFLOP/s  max |diff| {diff:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "cudnn": torch.backends.cudnn.version(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
