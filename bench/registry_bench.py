"""Benchmark: push and pull a pipeline-shaped model (~1,000 tensors, >= 500 MB) through a local
docker-registry, next to curl downloading the same bytes as one blob from the same registry, and
curl downloading the model's own blobs (as many at once as the pull, on keep-alive connections:
what the fastest per-tensor client would take on this registry).

    .venv/bin/python bench/registry_bench.py [--tensors 1000] [--mb 512] [--runs 3] [--concurrency 8] [--registry-env GOGC=400]

Prints one JSON object with the timings (medians over --runs). Goal: pull <= 1.4x curl.
Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import hashlib
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ollimg.manifest import Store  # noqa: E402
from ollimg.registry import pull, push  # noqa: E402
from tests.registry_server import RegistryServer  # noqa: E402
from tests.synthetic_model import pipeline_tensors, write_model  # noqa: E402


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def upload_one_blob(registry: RegistryServer, repository: str, path: Path) -> str:
    """The model's bytes concatenated into one blob, pushed with a plain POST + PUT."""
    digest = "sha256:" + hashlib.file_digest(open(path, "rb"), "sha256").hexdigest()
    with httpx.Client(timeout=300) as client:
        response = client.post(f"{registry.url}/v2/{repository}/blobs/uploads/")
        url = response.request.url.join(response.headers["location"]).copy_merge_params({"digest": digest})

        def body():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        client.put(url, content=body(), headers={"Content-Length": str(path.stat().st_size)}).raise_for_status()
    return digest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tensors", type=int, default=1000)
    parser.add_argument("--mb", type=int, default=512, help="total tensor bytes, MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--registry-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the registry process, e.g. GOGC=400 (repeatable)")
    args = parser.parse_args()
    registry_env = dict(item.split("=", 1) for item in args.registry_env)

    root = Path(tempfile.mkdtemp(prefix="ollimg-bench-"))
    registry = RegistryServer(root / "registry", env=registry_env).start()
    try:
        source = Store(root / "source")
        name = f"{registry.host}/bench/model:v1"
        started = time.perf_counter()
        model = write_model(source, name, pipeline_tensors(args.tensors, args.mb << 20), {"model_index.json": b"{}"})
        build_s = time.perf_counter() - started
        blobs = model.manifest.blobs()
        total = sum(d.size for d in blobs)

        started = time.perf_counter()
        push(source, name, concurrency=args.concurrency)
        push_s = time.perf_counter() - started
        started = time.perf_counter()
        push(source, name, concurrency=args.concurrency)
        repush_s = time.perf_counter() - started

        joined = root / "joined"
        with open(joined, "wb") as out:
            for desc in blobs:
                with open(source.blobs.path(desc.digest), "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        one = upload_one_blob(registry, "bench/oneblob", joined)
        joined.unlink()

        every_blob = root / "curl-blobs.cfg"
        every_blob.write_text("".join(
            f'url = "{registry.url}/v2/bench/model/blobs/{d.digest}"\noutput = "{root}/curl-blobs/{d.digest[7:]}"\n'
            for d in blobs))

        pulls, curls, curls_synced, curl_blobs = [], [], [], []
        cpu = {k: [] for k in ("pull_client", "pull_registry", "curl_client", "curl_registry", "curl_blobs_client", "curl_blobs_registry")}
        server = registry.process.pid
        for run in range(args.runs):
            target = root / f"pull-{run}"
            os.sync()  # each measurement starts with nothing left to write back
            client_cpu, registry_cpu, started = own_cpu(), process_cpu(server), time.perf_counter()
            pulled = pull(Store(target), name, concurrency=args.concurrency)
            pulls.append(time.perf_counter() - started)
            cpu["pull_client"].append(own_cpu() - client_cpu)
            cpu["pull_registry"].append(process_cpu(server) - registry_cpu)
            assert pulled.raw == model.raw
            shutil.rmtree(target)

            out = root / f"curl-{run}"
            os.sync()
            client_cpu, registry_cpu = own_cpu(resource.RUSAGE_CHILDREN), process_cpu(server)
            started = time.perf_counter()
            subprocess.run(["curl", "-sSf", "-o", str(out), f"{registry.url}/v2/bench/oneblob/blobs/{one}"], check=True)
            curls.append(time.perf_counter() - started)
            cpu["curl_client"].append(own_cpu(resource.RUSAGE_CHILDREN) - client_cpu)
            cpu["curl_registry"].append(process_cpu(server) - registry_cpu)
            assert out.stat().st_size == total
            subprocess.run(["sync", str(out)], check=True)  # the pull's blobs are durable when it returns
            curls_synced.append(time.perf_counter() - started)
            out.unlink()

            os.sync()
            client_cpu, registry_cpu = own_cpu(resource.RUSAGE_CHILDREN), process_cpu(server)
            started = time.perf_counter()
            subprocess.run(["curl", "-sSf", "--create-dirs", "--parallel", "--parallel-max", str(args.concurrency), "-K", str(every_blob)],
                           check=True, stderr=subprocess.DEVNULL)
            curl_blobs.append(time.perf_counter() - started)
            cpu["curl_blobs_client"].append(own_cpu(resource.RUSAGE_CHILDREN) - client_cpu)
            cpu["curl_blobs_registry"].append(process_cpu(server) - registry_cpu)
            assert sum(f.stat().st_size for f in (root / "curl-blobs").iterdir()) == total
            shutil.rmtree(root / "curl-blobs")

        pull_s, curl_s = statistics.median(pulls), statistics.median(curls)
        print(json.dumps({
            "machine": f"{platform.machine()}, {platform.processor() or '?'}, Python {platform.python_version()}",
            "registry_env": registry_env, "tensors": len(model.manifest.tensor_layers()), "blobs": len(blobs), "bytes": total,
            "manifest_bytes": len(model.raw), "concurrency": args.concurrency, "build_s": round(build_s, 2),
            "push_s": round(push_s, 2), "repush_all_present_s": round(repush_s, 2),
            "pull_s": [round(t, 2) for t in pulls], "curl_one_blob_s": [round(t, 2) for t in curls],
            "pull_median_s": round(pull_s, 2), "curl_median_s": round(curl_s, 2),
            "pull_over_curl": round(pull_s / curl_s, 2),
            "curl_one_blob_then_sync_s": [round(t, 2) for t in curls_synced],
            "pull_over_curl_then_sync": round(pull_s / statistics.median(curls_synced), 2),
            "curl_every_blob_s": [round(t, 2) for t in curl_blobs],
            "curl_every_blob_median_s": round(statistics.median(curl_blobs), 2),
            "curl_every_blob_over_curl": round(statistics.median(curl_blobs) / curl_s, 2),
            "pull_over_curl_every_blob": round(pull_s / statistics.median(curl_blobs), 2),
            "pull_MB_s": round(total / pull_s / 1e6), "curl_MB_s": round(total / curl_s / 1e6),
            "cpu_s_median": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
            "load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count(),
        }, indent=1))
    finally:
        registry.remove()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
