"""What the server adds to a generation: `ollimg serve` end to end vs the pipeline in-process.

Builds the tiny fixture model (fixtures/make_tiny_zimage.py), imports it with `ollimg create`,
starts a real `ollimg serve` on a free loopback port, warms it, then runs ROUNDS interleaved rounds
of: the peer, `ollimg.runtime.load(...).generate(...)` plus PNG encoding in this process (no HTTP,
no subprocess, no base64); POST /api/generate (stream=false); POST /v1/images/generations. Same
size, steps and seed everywhere. Also the server's own overhead per request: the client's wall time
minus the `timings.total` the runtime reports for that same request. Prints markdown.

    python bench/server_overhead.py [--size 64] [--steps 2] [--rounds 15]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "fixtures"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()

    from make_tiny_zimage import make_tiny_zimage

    tmp = Path(tempfile.mkdtemp(prefix="ollimg-bench-"))
    port = free_port()
    env = dict(os.environ, OLLIMG_MODELS=str(tmp / "models"), OLLIMG_HOST=f"127.0.0.1:{port}",
               XDG_DATA_HOME=str(tmp / "data"), OLLIMG_BACKEND="torch", OLLIMG_DEVICE="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    os.environ.update({k: env[k] for k in ("OLLIMG_MODELS", "OLLIMG_BACKEND", "OLLIMG_DEVICE")})
    model_dir = make_tiny_zimage(tmp / "tiny", dtype="float32", seed=0)
    subprocess.run([sys.executable, "-m", "ollimg", "create", "tiny", "-f", str(model_dir)], env=env, check=True,
                   capture_output=True)

    from ollimg.runtime import load

    pipe = load("tiny", backend="torch", device="cpu")
    server = subprocess.Popen([sys.executable, "-m", "ollimg", "serve"], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    body = {"model": "tiny", "prompt": "a red circle", "width": args.size, "height": args.size,
            "steps": args.steps, "seed": 1, "stream": False}
    oai = {"model": "tiny", "prompt": "a red circle", "size": f"{args.size}x{args.size}", "steps": args.steps, "seed": 1}
    times: dict[str, list[float]] = {"direct": [], "native": [], "openai": [], "runtime": [], "paired": []}
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = httpx.Client(timeout=300)
        client.post(url + "/api/generate", json=body).raise_for_status()  # load and warm
        for i in range(args.rounds + 1):  # the three paths interleaved, so load changes hit them alike
            t = time.perf_counter()
            result = pipe.generate("a red circle", width=args.size, height=args.size, steps=args.steps, seed=1)
            result.images[0].save(io.BytesIO(), "PNG")
            t1 = time.perf_counter()
            r = client.post(url + "/api/generate", json=body)
            t2 = time.perf_counter()
            client.post(url + "/v1/images/generations", json=oai).raise_for_status()
            t3 = time.perf_counter()
            if i == 0:
                continue  # warm-up round
            runtime_total = r.json()["timings"]["total"]
            times["direct"].append(t1 - t)
            times["native"].append(t2 - t1)
            times["openai"].append(t3 - t2)
            times["runtime"].append(runtime_total)
            times["paired"].append((t2 - t1) - runtime_total)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)

    med = statistics.median
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{args.size}x{args.size}, {args.steps} steps, {args.rounds} interleaved rounds: median (min)")
    print("| path | wall per image |")
    print("|---|---|")
    for label, key in (("in-process `load().generate()` + PNG (peer)", "direct"),
                       ("runtime's own `timings.total` inside /api/generate", "runtime"),
                       ("POST /api/generate, stream=false (client wall)", "native"),
                       ("POST /v1/images/generations (client wall)", "openai")):
        print(f"| {label} | {med(times[key]) * 1000:.0f} ms ({min(times[key]) * 1000:.0f}) |")
    print(f"\nserver overhead per request (client wall minus the runtime's total, same request): "
          f"median {med(times['paired']) * 1000:.0f} ms, min {min(times['paired']) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
