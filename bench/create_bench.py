"""Benchmark: `ollimg create` against a plain `cp -r` and `sha256sum` of the same files (not a test).

Builds a model of about --gb GB (random normal float32 transformer in 4 shards + index, bf16 text
encoder, VAE, configs) in the diffusers layout under a temp dir on the same disk as the store,
then times, in the same run, round by round:
  cp -r SRC DST            plain copy (page cache only, like a user sees it)
  cp -r SRC DST && sync    the copy made durable (create fsyncs every blob)
  sha256sum FILES          coreutils hashing alone
  ollimg create NAME -f SRC   through the real CLI, into an empty store each round
Each is run "warm" (source read into the page cache first) and, with --cold when
/proc/sys/vm/drop_caches is writable, "cold" (sync + drop caches first). The destination is
emptied and synced before every run. Prints medians, ratios to cp, and CPU seconds (user+sys).

    python bench/create_bench.py [--gb 2.2] [--rounds 3] [--dir /work/tmp] [--fp8] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def write_safetensors(path: Path, tensors: list[tuple[str, str, tuple[int, ...]]], rng) -> None:
    """Stream a safetensors file of random tensors without holding it in memory."""
    size = {"F32": 4, "BF16": 2}
    header, offset = {}, 0
    for name, dtype, shape in tensors:
        n = int(np.prod(shape)) * size[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, dtype, shape in tensors:
            rows = shape[0]
            for start in range(0, rows, 256):
                block = rng.standard_normal((min(256, rows - start), *shape[1:]), dtype=np.float32) * 0.02
                if dtype == "BF16":
                    block = (block.view(np.uint32) >> 16).astype(np.uint16)
                f.write(block.tobytes())


def make_model(root: Path, gb: float) -> int:
    rng = np.random.default_rng(0)
    dim, ffn = 2048, 5461
    layer = [("attention.to_q.weight", (dim, dim)), ("attention.to_k.weight", (dim, dim)),
             ("attention.to_v.weight", (dim, dim)), ("attention.to_out.0.weight", (dim, dim)),
             ("attention.norm_q.weight", (128,)), ("attention.norm_k.weight", (128,)),
             ("feed_forward.w1.weight", (ffn, dim)), ("feed_forward.w2.weight", (dim, ffn)),
             ("feed_forward.w3.weight", (ffn, dim)), ("adaLN_modulation.0.weight", (4 * dim, 256)),
             ("adaLN_modulation.0.bias", (4 * dim,)), ("attention_norm1.weight", (dim,)), ("ffn_norm1.weight", (dim,))]
    per_layer = sum(int(np.prod(s)) * 4 for _, s in layer)
    n_layers = max(1, round(gb * 0.95e9 / per_layer))
    names = [(f"layers.{i}.{n}", "F32", s) for i in range(n_layers) for n, s in layer]
    names += [("x_pad_token", "F32", (1, dim)), ("cap_pad_token", "F32", (1, dim)),
              ("t_embedder.mlp.0.weight", "F32", (1024, 256)), ("cap_embedder.1.weight", "F32", (dim, 2560))]
    index = {"_class_name": "ZImagePipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "Qwen3Model"], "tokenizer": ["transformers", "Qwen2Tokenizer"],
             "transformer": ["diffusers", "ZImageTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(index))
    for sub, cfg in (("scheduler", "scheduler_config.json"), ("tokenizer", "tokenizer_config.json"),
                     ("transformer", "config.json"), ("text_encoder", "config.json"), ("vae", "config.json")):
        (root / sub).mkdir()
        (root / sub / cfg).write_text(json.dumps({"bench": True}))
    (root / "tokenizer" / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {str(i): i for i in range(50000)}}}))
    shards = [names[i::4] for i in range(4)]
    weight_map = {}
    for k, part in enumerate(shards, 1):
        shard = f"diffusion_pytorch_model-{k:05d}-of-00004.safetensors"
        write_safetensors(root / "transformer" / shard, part, rng)
        weight_map |= {n: shard for n, _, _ in part}
    (root / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    write_safetensors(root / "text_encoder" / "model.safetensors",
                      [("model.embed_tokens.weight", "BF16", (8192, 1024))] +
                      [(f"model.layers.{i}.mlp.up_proj.weight", "BF16", (2048, 1024)) for i in range(8)], rng)
    write_safetensors(root / "vae" / "diffusion_pytorch_model.safetensors",
                      [(f"decoder.up_blocks.{i}.conv.weight", "F32", (512, 512, 3, 3)) for i in range(4)], rng)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def drop_caches() -> bool:
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def warm(src: Path) -> None:
    subprocess.run(f"cat $(find {src} -type f) > /dev/null", shell=True, check=True)


def timed(cmd: str, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys of the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="work dir (same disk as the store); default: a temp dir")
    parser.add_argument("--fp8", action="store_true", help="also time create --quantize fp8 --dtype bf16")
    parser.add_argument("--cold", action="store_true", help="also run each cold: sync + drop the page cache (root; affects the whole machine)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ollimg-bench-", dir=args.dir))
    try:
        src = work / "src"
        total = make_model(src, args.gb)
        print(f"model: {total / 1e9:.2f} GB in {sum(1 for p in src.rglob('*') if p.is_file())} files at {src}")
        env = dict(os.environ, PYTHONPATH=str(ROOT), OLLIMG_MODELS=str(work / "store"))
        files = " ".join(str(p) for p in sorted(src.rglob("*")) if p.is_file())
        can_drop = args.cold and drop_caches()
        peers = {
            "cp -r": f"cp -r {src} {work}/copy",
            "cp -r + sync": f"cp -r {src} {work}/copy && sync",
            "sha256sum": f"sha256sum {files}",
            "ollimg create": f"{sys.executable} -m ollimg create bench -f {src}",
        }
        if args.fp8:
            peers["ollimg create --quantize fp8 --dtype bf16"] = f"{sys.executable} -m ollimg create bench -f {src} --quantize fp8 --dtype bf16"
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for label, cmd in peers.items():
                for mode in (("cold", "warm") if can_drop else ("warm",)):
                    shutil.rmtree(work / "copy", ignore_errors=True)
                    shutil.rmtree(work / "store", ignore_errors=True)
                    subprocess.run(["sync"], check=True)
                    if mode == "cold":
                        drop_caches()
                    else:
                        warm(src)
                    results.setdefault((label, mode), []).append(timed(cmd, env))
        def median(label: str, mode: str, i: int = 0) -> float:
            return statistics.median(r[i] for r in results[(label, mode)])

        print(f"load average at the end: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
        print(f"{'command':44} {'mode':5} {'wall s':>7} {'GB/s':>5} {'x cp':>5} {'x cp+sync':>9} {'CPU s':>6}   (wall of each round)")
        for (label, mode), runs in results.items():
            t = median(label, mode)
            print(f"{label:44} {mode:5} {t:7.2f} {total / 1e9 / t:5.2f} {t / median('cp -r', mode):5.2f} "
                  f"{t / median('cp -r + sync', mode):9.2f} {median(label, mode, 1):6.2f}   " + " ".join(f"{w:.2f}" for w, _ in runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
