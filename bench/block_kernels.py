"""One Z-Image transformer block on the GPU, compiled as the runtime compiles it (`fuse()`, then
`compile(fullgraph=True, dynamic=True)`), at a 1024x1024 generation's 4288 tokens: the block's time
per call, each kernel's time per call, and Inductor's generated code (for reading the Triton
kernels' schedules), in bf16 and with fp8 weights.

Variants, each with the same random weights in the real shapes (dim 3840, 30 heads of 128, SwiGLU 10240):
  halves:      the runtime's block: fused q/k rows (and QK-norm weights) in `halves_order`, so that
               RoPE's pairs are each head's halves (x[j], x[j+64]), tables (B, L, 2, 64).
  interleaved: fused as before 2026-12-03's sixth session, rows in the checkpoint's order and RoPE on
               interleaved pairs (x[2j], x[2j+1]), tables (B, L, 64, 2).
  halves-stock: halves, compiled with Inductor's own heuristics instead of the runtime's
               (ollimg/runtime/torch_compile_heuristics.py: single-pass reductions over a head).
  halves-rows: halves, the runtime's heuristics and single-pass reductions over rows of up to 4096
               too (the block's RMSNorms over 3840; Inductor's limit is 1024). An experiment.
Attention is unchanged by a permutation shared by q and k, so the outputs should agree within
rounding: the script prints each variant's largest difference from halves.

    python bench/block_kernels.py [--tokens 4288] [--dtypes bf16 fp8]
        [--variants halves halves-stock halves-rows interleaved]
        [--runs 50] [--code DIR] [--json F]

`--code DIR` keeps Inductor's output code (TORCH_LOGS=output_code also prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from types import SimpleNamespace

def build(dtype: str, variant: str, device):
    import torch

    from ollimg.runtime.models.zimage.torch import transformer as T
    from ollimg.quantize.fp8 import quantize_rows
    from ollimg.runtime.torch_backend import fp8_matmul

    c = SimpleNamespace(dim=3840, n_heads=30, qk_norm=True, norm_eps=1e-5, ffn_dim=10240, adaln_dim=256)
    torch.manual_seed(0)
    with torch.device(device):
        block = T.Block(c, modulated=True)
    for name, p in block.named_parameters():
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or ".norm_" in name:
            p.data = (1 + 0.1 * torch.randn(p.shape, device=device)).to(torch.bfloat16)
        else:
            p.data = (torch.randn(p.shape, device=device) / p.shape[-1] ** 0.5).to(torch.bfloat16)
    if dtype == "fp8":
        for linear in block.modules():
            if isinstance(linear, T.Linear):
                weight, linear.weight_scale = quantize_rows(linear.weight.float())  # as `ollimg create --quantize fp8`
                linear.weight = torch.nn.Parameter(weight, requires_grad=False)
                linear.fp8_kernel = fp8_matmul(torch.device(device))
    if variant == "halves":
        block.attention.fuse()  # the runtime's: q/k rows in halves_order
    else:  # the fused projection as it was before: rows in the checkpoint's order
        attn = block.attention
        attn.to_qkv = T.fused_linear([attn.to_q, attn.to_k, attn.to_v])
        del attn.to_q, attn.to_k, attn.to_v
    block.feed_forward.fuse()
    return block


def kernel_times(fn, calls: int) -> dict[str, float]:
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per[event.name] += event.device_time_total / calls
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4288)
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp8"])
    parser.add_argument("--variants", nargs="+", default=["halves", "halves-stock", "halves-rows", "interleaved"])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--code", type=str, default=None)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="block-kernels-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # a fresh compile each run, its code kept below
    import torch
    import torch._inductor.config as inductor

    inductor.fx_graph_cache = False  # each variant compiles with its own heuristics

    from torch._inductor.choices import InductorChoices
    from torch._inductor.virtualized import V

    from ollimg.runtime import torch_attention, torch_compile
    from ollimg.runtime.torch_compile_heuristics import Choices
    from ollimg.runtime.models.zimage.torch import transformer as T

    class Rows(Choices):
        single_pass_up_to = 4096  # the block's 3840-wide norms too

    device = torch.device("cuda")
    torch_attention.import_flash(torch_compile.flash_cache_dir())
    torch_attention.use_flash(device)
    halves_rope = T.apply_rope_halves
    g = torch.Generator(device).manual_seed(1)
    x = torch.randn(1, args.tokens, 3840, device=device, generator=g).to(torch.bfloat16)
    angles = torch.rand(1, args.tokens, 64, device=device, generator=g) * 100
    tables = {"halves": torch.stack([angles.cos(), angles.sin()], dim=-2),
              "interleaved": torch.stack([angles.cos(), angles.sin()], dim=-1)}
    adaln = torch.randn(1, 256, device=device, generator=g).to(torch.bfloat16)
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": args.tokens,
                     "flash": torch_attention._flash_on}
    for dtype in args.dtypes:
        outputs = {}
        for variant in args.variants:
            layout = variant.split("-")[0]
            block = build(dtype, layout, device)
            freqs = tables[layout]
            T.apply_rope_halves = halves_rope if layout == "halves" else T.apply_rope  # what the fused path calls
            choices = {"stock": InductorChoices, "rows": Rows}.get(variant.partition("-")[2], Choices)
            V.set_choices_handler(choices())  # this thread's heuristics (the FX graph cache is off)
            torch._dynamo.reset()
            block.compile(fullgraph=True, dynamic=True)
            start = time.perf_counter()
            with torch.no_grad():
                out = block(x, None, freqs, adaln)
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - start

                def call():
                    return block(x, None, freqs, adaln)

                for _ in range(5):
                    call()
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                begin.record()
                for _ in range(args.runs):
                    call()
                end.record()
                torch.cuda.synchronize()
                ms = begin.elapsed_time(end) / args.runs
                kernels = kernel_times(call, 10)
            outputs[variant] = out.float()
            label = f"{dtype} {variant}"
            results[label] = {"ms_per_block": ms, "compile_s": compile_s,
                              "kernels_us": {k[:160]: round(v, 2) for k, v in kernels.items()}}
            print(f"\n{label}: {ms:.3f} ms per block call (x30 layers x8 steps = {ms * 240:.0f} ms), "
                  f"first call {compile_s:.1f} s", flush=True)
            for name, us in list(kernels.items())[:14]:
                print(f"  {us:9.1f} us  {name[:130]}", flush=True)
        T.apply_rope_halves = halves_rope
        for other in [v for v in outputs if v != "halves" and "halves" in outputs]:
            diff = (outputs[other] - outputs["halves"]).abs().max().item()
            scale = outputs[other].abs().max().item()
            results[f"{dtype} halves vs {other} max diff"] = diff
            print(f"{dtype}: halves vs {other}, max |diff| {diff:.4g} (output max {scale:.4g})", flush=True)
    if args.code:
        os.makedirs(args.code, exist_ok=True)
        for root, _, files in os.walk(cache):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    text = open(path).read()
                    if "def call(" in text:  # a graph's output code, its Triton kernels inline
                        shutil.copy(path, os.path.join(args.code, name))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
