"""What fp8 does to a trained model: the shipped shapes model imported as bf16 and with
`--quantize fp8`, run on the held-out prompts (tests/quality) in bf16 three ways: the bf16 model,
the fp8 model dequantized per call, and the fp8 model multiplied in fp8 (torch._scaled_mm, which
also runs on the CPU). Prints the checker's scores and the pixel differences from the bf16 images.

    python bench/fp8_quality.py --work /tmp/fp8q [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ollimg.builtin import builtin_models  # noqa: E402
from ollimg.create import create  # noqa: E402
from ollimg.manifest import Name, Store  # noqa: E402
from ollimg.runtime import load, torch_backend  # noqa: E402
from training.shapes.check import score, summarize  # noqa: E402
from training.shapes.world import heldout_specs  # noqa: E402

BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    store = Store(args.work / "store")
    source = builtin_models()["shapes"]
    for name, quantize in (("shapes:bf16", None), ("shapes:fp8", "fp8")):
        if not store.exists(Name.parse(name)):
            create(store, name, source, quantize=quantize)
    specs = heldout_specs()
    results, base = {}, None
    for label, name, matmul in (("bf16", "shapes:bf16", False), ("fp8, dequantized per call", "shapes:fp8", False),
                                ("fp8, fp8 matmul", "shapes:fp8", True)):
        calls = []
        torch_backend.fp8_matmul = (lambda device: True) if matmul else (lambda device: False)  # noqa: E731
        real = torch_backend.scaled_linear
        torch_backend.scaled_linear = lambda *a, real=real: calls.append(1) or real(*a)
        pipe = load(name, backend="torch", device=args.device, dtype="bfloat16", models_dir=store.root)
        images, started = [], time.perf_counter()
        for start in range(0, len(specs), BATCH):
            chunk = specs[start:start + BATCH]
            result = pipe.generate([s.caption for s in chunk], seed=start)
            images += [np.asarray(im.convert("RGB")).astype(int) for im in result.images]
        torch_backend.scaled_linear = real
        figures = {k: round(v, 4) for k, v in summarize([score(im, s) for im, s in zip(images, specs)]).items()}
        entry = {"scores": figures, "fp8_matmul_calls": len(calls), "seconds": round(time.perf_counter() - started, 2)}
        if base is None:
            base = np.stack(images)
        else:
            diff = np.abs(np.stack(images) - base)
            entry["vs_bf16_levels"] = {"mean": round(float(diff.mean()), 3), "p99": float(np.percentile(diff, 99)),
                                       "max": int(diff.max())}
        results[label] = entry
        print(label, json.dumps(entry), flush=True)
    print(json.dumps({"device": args.device, "prompts": len(specs), "results": results}, indent=1))


if __name__ == "__main__":
    main()
