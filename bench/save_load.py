"""Benchmark: `ollimg save` and `ollimg load` of a pipeline-shaped model (~1,000 bf16 tensors,
~2 GB) next to `tar -I 'zstd -T0' -cf` and `-xf` of the same blob files, in the same run.

    .venv/bin/python bench/save_load.py [--tensors 1000] [--mb 2048] [--runs 3] [--level 3] [--dir /work/tmp]

Tensor data is bf16 of normal random values (like trained weights: the sign and exponent byte
compresses, the mantissa byte hardly does), so zstd has real work to do. Both sides run warm (the
blob files are read into the page cache first) through their real command lines (ollimg's
Python start-up included). `load` makes every blob durable (one syncfs) before it names it, so
the peer is given both as `tar -xf` and as `tar -xf` followed by `sync -f` (the same syncfs).
Every load starts into an empty directory after a `sync`, so no earlier write-back is counted.
Wall and CPU seconds (user + system of all the command's processes) are both given: on a
shared machine the CPU figure is the steadier one. Prints one JSON object (medians over --runs,
then each run). Goal: each ollimg command within
1.2x of its tar + zstd peer and the archive within 1 % of the peer's size. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ollimg.blobs import tensor_blob_header  # noqa: E402
from ollimg.manifest import Descriptor, Manifest, Name, Store  # noqa: E402
from ollimg.manifest.manifest import CONFIG_TYPE, file_layer, tensor_layer  # noqa: E402
from tests.synthetic_model import pipeline_tensors  # noqa: E402

OLLIMG = [sys.executable, "-m", "ollimg"]
NAME = "bench/model:v1"


def bf16_normal(rng: np.random.Generator, count: int) -> bytes:
    """`count` bf16 values of a normal distribution (std 0.02, like initialised weights)."""
    values = rng.standard_normal(count, dtype=np.float32) * np.float32(0.02)
    return (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def write_bench_model(store: Store, tensors: int, mb: int) -> list[Descriptor]:
    rng = np.random.default_rng(0)
    layers, table = [], {}
    with store.lock():
        for title, (dtype, shape) in pipeline_tensors(tensors, mb << 20).items():
            count = int(np.prod(shape))
            header = tensor_blob_header(dtype, shape)
            with store.blobs.writer() as writer:
                writer.write(header)
                for start in range(0, count, 16 << 20):
                    writer.write(bf16_normal(rng, min(16 << 20, count - start)))
                digest = writer.commit(sync=False)
            store.blobs.land([writer])
            layers.append(tensor_layer(title, digest, writer.size, dtype, shape))
            table[title] = {"dtype": dtype, "shape": list(shape), "digest": digest}
        index = b'{"_class_name": "Bench"}'
        layers.append(file_layer("model_index.json", store.blobs.put_bytes(index), len(index)))
        config = json.dumps({"format": 1, "pipeline": "Bench", "tensors": table}).encode()
        config_desc = Descriptor(mediaType=CONFIG_TYPE, digest=store.blobs.put_bytes(config), size=len(config))
        model = store.put_manifest(Name.parse(NAME), Manifest(config=config_desc, layers=layers).dump())
    return model.manifest.blobs()


CPU: dict[str, list[float]] = {}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(kind: str, command: list[str], env: dict | None = None, **kwargs) -> float:
    """Wall seconds of the command; its CPU seconds (user + system, all its processes) go to CPU."""
    cpu, started = children_cpu(), time.perf_counter()
    subprocess.run(command, check=True, env=env, **kwargs)
    wall = time.perf_counter() - started
    CPU.setdefault(kind, []).append(children_cpu() - cpu)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tensors", type=int, default=1000)
    parser.add_argument("--mb", type=int, default=2048, help="total tensor bytes, MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ollimg-saveload-", dir=args.dir))
    try:
        source = Store(root / "source")
        started = time.perf_counter()
        blobs = write_bench_model(source, args.tensors, args.mb)
        build_s = time.perf_counter() - started
        total = sum(d.size for d in blobs)
        listing = root / "files.txt"
        listing.write_text("".join(source.blobs.path(d.digest).name + "\n" for d in blobs))
        for desc in blobs:  # warm: every blob in the page cache
            source.blobs.path(desc.digest).read_bytes()
        env = {**os.environ, "OLLIMG_MODELS": str(source.root), "OLLIMG_HOST": "127.0.0.1:9",
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        zstd = f"zstd -T0 -{args.level}"
        ours, peer = root / "model.tar.zst", root / "peer.tar.zst"
        times: dict[str, list[float]] = {k: [] for k in ("save", "tar_cf", "load", "tar_xf", "tar_xf_sync")}
        loads: list[float] = []  # the 1-minute load average as each round starts: how shared the cores were
        for _ in range(args.runs):
            loads.append(round(os.getloadavg()[0], 2))
            for f in (ours, peer):
                f.unlink(missing_ok=True)
            os.sync()
            times["save"].append(timed("save", [*OLLIMG, "save", NAME, "-o", str(ours), "--level", str(args.level)], env))
            os.sync()
            times["tar_cf"].append(timed("tar_cf", ["tar", "-I", zstd, "-cf", str(peer), "-C", str(source.blobs.root), "-T", str(listing)]))
            for kind in ("load", "tar_xf", "tar_xf_sync"):
                target = root / "target"
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir()
                os.sync()
                if kind == "load":
                    times[kind].append(timed(kind, [*OLLIMG, "load", str(ours)], {**env, "OLLIMG_MODELS": str(target)},
                                             stdout=subprocess.DEVNULL))
                    assert Store(target).get(Name.parse(NAME)).raw == source.get(Name.parse(NAME)).raw
                elif kind == "tar_xf":
                    times[kind].append(timed(kind, ["tar", "-I", "zstd -T0", "-xf", str(peer), "-C", str(target)]))
                else:
                    times[kind].append(timed(kind, ["sh", "-c", f"tar -I 'zstd -T0' -xf {peer} -C {target} && sync -f {target}"]))
            shutil.rmtree(root / "target", ignore_errors=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(json.dumps({
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "zstd": subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip(),
            "tensors": args.tensors, "blobs": len(blobs), "bytes": total, "level": args.level, "build_s": round(build_s, 1),
            "archive_bytes": ours.stat().st_size, "peer_archive_bytes": peer.stat().st_size,
            "size_over_peer": round(ours.stat().st_size / peer.stat().st_size, 4),
            "median_s": {k: round(v, 2) for k, v in med.items()},
            "save_over_tar_cf": round(med["save"] / med["tar_cf"], 2),
            "load_over_tar_xf": round(med["load"] / med["tar_xf"], 2),
            "load_over_tar_xf_sync": round(med["load"] / med["tar_xf_sync"], 2),
            # each round's load and tar -xf run one after the other: the median of their ratios
            # is steadier than the ratio of medians when other work comes and goes
            "load_over_tar_xf_paired": round(statistics.median(a / b for a, b in zip(times["load"], times["tar_xf"])), 2),
            "save_over_tar_cf_paired": round(statistics.median(a / b for a, b in zip(times["save"], times["tar_cf"])), 2),
            "runs_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
            "median_cpu_s": {k: round(statistics.median(v), 2) for k, v in CPU.items()},
            "save_over_tar_cf_cpu": round(statistics.median(CPU["save"]) / statistics.median(CPU["tar_cf"]), 2),
            "load_over_tar_xf_cpu": round(statistics.median(CPU["load"]) / statistics.median(CPU["tar_xf"]), 2),
            "load_average_1m": os.getloadavg()[0],
            "load_average_1m_per_run": loads,
        }, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
