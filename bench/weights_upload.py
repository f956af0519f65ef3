"""Weights from files to the GPU: `torch_backend.upload` (fixed pinned staging buffers per reader,
async copies) against the two ways it replaced or could be: a pinned buffer allocated per tensor
(the loader before 2026-12-02), and pageable memory-mapped tensors copied with `.to(device)`.
GB/s with the page cache warm, and the staged loader once more with it dropped (needs root).

    python bench/weights_upload.py --dir /tmp/wu [--gb 6]

The files are Z-Image-like: most bytes in 40-120 MB tensors, a few hundred small ones.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ollimg.blobs import TensorRef
from ollimg.runtime import torch_backend
from ollimg.runtime.torch_backend import mapped, upload


def write_files(folder: Path, gb: float) -> dict[str, TensorRef]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes, total = [], 0
    while total < gb * 1e9:
        big = int(rng.integers(20, 60)) * 2**20  # elements of bf16: 40-120 MB
        sizes += [big] + [3840] * 4  # and small norm weights
        total += 2 * big
    refs = {}
    for i, n in enumerate(sizes):
        path = folder / f"t{i:05d}"
        if not path.exists() or path.stat().st_size != 2 * n:
            rng.integers(0, 2**16, n, dtype=np.uint16).tofile(path)
        refs[f"t{i:05d}"] = TensorRef(path, 0, 2 * n, "BF16", (n,))
    return refs


def per_tensor_pinned(refs, device, dtype):
    """The loader before: a new pinned buffer for every tensor."""

    def one(ref):
        buffer = torch.empty(ref.nbytes, dtype=torch.uint8, pin_memory=True)
        with open(ref.path, "rb", buffering=0) as f:
            f.readinto(memoryview(buffer.numpy()))
        return buffer.view(torch.bfloat16).to(device, non_blocking=True)

    with ThreadPoolExecutor(torch_backend.READERS) as pool:
        out = list(pool.map(one, sorted(refs.values(), key=lambda r: -r.nbytes)))
    torch.cuda.synchronize(device)
    torch._C._host_emptyCache()
    return out


def pageable(refs, device, dtype):
    with ThreadPoolExecutor(torch_backend.READERS) as pool:
        out = list(pool.map(lambda r: mapped(r).to(device), refs.values()))
    torch.cuda.synchronize(device)
    return out


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--gb", type=float, default=6.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda")
    refs = write_files(args.dir, args.gb)
    nbytes = sum(r.nbytes for r in refs.values())
    torch.zeros(1, device=device)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "gb": nbytes / 1e9,
               "tensors": len(refs)}
    loaders = {"staged (upload)": upload, "pinned per tensor": per_tensor_pinned, "pageable": pageable}
    for rnd in range(2):
        for label, load in loaders.items():
            start = time.perf_counter()
            out = load(refs, device, torch.bfloat16)
            seconds = time.perf_counter() - start
            del out
            torch.cuda.empty_cache()
            torch_backend.release_staging()  # each upload pins its buffers, as a model's first does
            results.setdefault(label, []).append(nbytes / seconds / 1e9)
            print(f"{label}: {nbytes / seconds / 1e9:.2f} GB/s (page cache warm)", flush=True)
    if os.geteuid() == 0:
        drop_caches()
        start = time.perf_counter()
        out = upload(refs, device, torch.bfloat16)
        results["staged (upload), cold"] = nbytes / (time.perf_counter() - start) / 1e9
        print(f"staged (upload), page cache dropped: {results['staged (upload), cold']:.2f} GB/s", flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
