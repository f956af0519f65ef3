"""Which text encode and VAE decode are fastest on this GPU: the runtime's, against variants,
each from the same weights and input and checked against the runtime's output.

The 2026-12-03 profile of a 1024x1024 bf16 generation on the H200 put the decode at 51 ms of wall
time for ~31 ms of GPU kernels (8.5 of them cuDNN's NCHW<->NHWC copies around the convolutions)
and the text encode at 16 ms for ~3 ms: the rest is the GPU waiting for the host's launches. The
first run of this bench (bench/README.md, 2026-12-03, fourth session) put two of its variants in
the runtime: the text encoder's compiled layers replayed as a CUDA graph per prompt length, and on
a GPU the decoder in NHWC.
Variants:
- text: the compiled layers launched one kernel at a time (the runtime before its graphs); a CUDA
  graph of the layers' eager code.
- decode: the decoder's weights and input in NCHW, and in NHWC (channels_last: cuDNN's native
  layout); the runtime's decode (VAE and the uint8 conversion) captured as a CUDA graph for the
  shape; torch.compile of it for the shape (its compile time shown), with and without CUDA graphs
  (mode "reduce-overhead").
Per variant: median wall time (the runtime's call, ending on the host: features synchronised,
pixels copied back), GPU time by CUDA events, the difference from the runtime's output, and the
GPU memory it holds beyond the runtime, allocated and reserved (a graph keeps its own pool);
"first call" includes the capture or compile.

    python bench/stage_variants.py --models /tmp/zb/store --model zimage-random:bf16 [--size 1024] [--runs 10]
    python bench/stage_variants.py --models DIR --model tiny --device cpu --size 64   (smoke run: no graphs)
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

from gpu_baseline import PROMPT
from ollimg.runtime.cuda_graphs import ShapeGraphs
from ollimg.runtime.models.zimage.torch.build import device_pixels




def timed(call, runs: int, cuda: bool) -> dict:
    """call() -> a host numpy array; median wall and GPU (CUDA events) time of `runs` calls."""
    walls, gpus, out = [], [], None
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        start = time.perf_counter()
        out = call()
        walls.append(time.perf_counter() - start)
        if cuda:
            end.record()
            end.synchronize()
            gpus.append(begin.elapsed_time(end) / 1e3)
    return {"wall_s": statistics.median(walls), "gpu_s": statistics.median(gpus) if gpus else None, "out": out}


def text_variants(pipe, cuda: bool) -> dict:
    """name -> a function that sets the variant up and returns call() -> features (numpy, float32)."""
    encoder = pipe.components.modules["text_encoder"]
    ids = pipe.tokenizer.encode([PROMPT], pipe.defaults.max_sequence_length)

    def host(features) -> np.ndarray:
        return torch.cat(features).float().cpu().numpy()

    def plain():  # the compiled layers launched one kernel at a time, as before they were graphed
        return lambda: host(encoder(ids))

    def graph_eager():  # the layers' eager code in a graph: nn.Module keeps the compiled call beside it
        saved = [layer._compiled_call_impl for layer in encoder.layers]

        def eager_states(x, cos, sin, mask):
            for layer in encoder.layers:
                layer._compiled_call_impl = None
            try:
                return encoder.hidden_states(x, cos, sin, mask)
            finally:
                for layer, impl in zip(encoder.layers, saved):
                    layer._compiled_call_impl = impl
        graphs = ShapeGraphs(eager_states)
        return lambda: host(encoder(ids, layers=graphs))

    variants = {"text: runtime": lambda: lambda: host(pipe.components.encode(ids)),
                "text: no graph": plain}
    if cuda:
        variants["text: graph, eager layers"] = graph_eager
    return variants


def decode_variants(pipe, size: int, device: str, cuda: bool) -> dict:
    """name -> a function that sets the variant up and returns call() -> pixels (numpy, uint8)."""
    vae = pipe.components.modules["vae"]
    config, dtype = vae.config, next(vae.parameters()).dtype  # the runtime decodes in the compute dtype
    cells = size // config.scale
    noise = torch.Generator().manual_seed(0)
    latents = torch.randn(1, config.latent_channels, cells, cells, generator=noise).to(device)

    def to_pixels(module):  # the runtime's decode on a given decoder, up to its copy to the host
        return lambda latents: device_pixels(module, latents, dtype)

    def layout(memory_format):  # a copy of the decoder with its weights and its input in this layout
        module = copy.deepcopy(vae).to(memory_format=memory_format)
        module.memory_format = memory_format
        return module

    def on(decode):
        return lambda: decode(latents).cpu().numpy()

    variants = {"decode: runtime": lambda: lambda: pipe.components.decode(latents),
                "decode: NCHW": lambda: on(to_pixels(layout(torch.contiguous_format))),
                "decode: NHWC": lambda: on(to_pixels(layout(torch.channels_last)))}
    if cuda:
        variants["decode: graph"] = lambda: on(ShapeGraphs(to_pixels(vae)))
    variants["decode: compiled"] = lambda: on(torch.compile(to_pixels(vae), dynamic=False))
    if cuda:
        variants["decode: compiled, CUDA graphs"] = lambda: on(torch.compile(to_pixels(vae), dynamic=False,
                                                                             mode="reduce-overhead"))
    return variants


def memory(cuda: bool) -> tuple[int, int]:
    """Bytes the GPU's caching allocator has allocated and reserved (a CUDA graph's pool is reserved)."""
    return (torch.cuda.memory_allocated(), torch.cuda.memory_reserved()) if cuda else (0, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--model", default="zimage-random:bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--stages", nargs="+", default=["text", "decode"], choices=["text", "decode"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    # The text encoder's layers as the runtime runs them from a load's second generation.
    os.environ.setdefault("OLLIMG_COMPILE", "on" if cuda else "off")
    from ollimg.runtime import load

    pipe = load(args.model, backend="torch", device=args.device, models_dir=args.models)
    if pipe.components.begin is not None:
        pipe.components.begin()  # switches to the compiled blocks (they compile at their first run)
    variants = {}
    if "text" in args.stages:
        variants.update(text_variants(pipe, cuda))
    if "decode" in args.stages:
        variants.update(decode_variants(pipe, args.size, args.device, cuda))
    results, reference = {}, {}
    for name, make in variants.items():
        stage = name.split(":")[0]
        before = memory(cuda)
        with torch.inference_mode():
            start = time.perf_counter()
            call = make()
            first = timed(call, 1, cuda)  # a compile or capture happens here
            setup = time.perf_counter() - start
            row = timed(call, args.runs, cuda)
        out = row.pop("out").astype(np.float32)
        ref = reference.setdefault(stage, out)
        diff = np.abs(out - ref)
        row.update(first_call_s=setup, first_wall_s=first["wall_s"], max_diff=float(diff.max()),
                   max_diff_relative=float(diff.max() / max(np.abs(ref).max(), 1e-30)),
                   values_differing=float((diff > 0).mean()),
                   **{f"holds_{kind}_gib": (after - was) / 2**30 for kind, after, was in zip(("allocated", "reserved"),
                                                                                         memory(cuda), before)})
        results[name] = row
        gpu = f"{row['gpu_s'] * 1e3:7.1f} ms GPU" if row["gpu_s"] is not None else ""
        print(f"{name:32s} {row['wall_s'] * 1e3:7.1f} ms wall {gpu}  first call {setup:6.2f} s  max diff "
              f"{row['max_diff']:.3g} ({row['values_differing']:.2%} differ)  "
              f"holds {row['holds_allocated_gib']:.2f} GiB "
              f"(reserved {row['holds_reserved_gib']:.2f})", flush=True)
        del call
    info = {"model": args.model, "size": args.size, "runs": args.runs, "device": args.device, "prompt": PROMPT,
            "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None, "variants": results}
    if args.json:
        args.json.write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
