"""A server's first image of a model it has not loaded: with the spare runtime (OLLIMG_SPARE_RUNTIME
on, the default: a runtime process started ahead, its imports done) and without it (off: the
runtime process starts when the request comes). Each round starts a fresh `ollimg serve` per
setting, lets it settle for --settle seconds (a server that has been up a while), then times one
request for the model (load + generate, stream false) and a second one (the model loaded). The
peer, in the same rounds: diffusers' ZImagePipeline in a fresh process, from its start to its first
image (bench/cpu_start.py), since diffusers has no server. Default model: the built-in shapes model
at its defaults on the CPU. On a GPU, with a store that holds the model (bench/gpu_baseline.py makes
one), compiled and eager (OLLIMG_COMPILE) and no peer:

    python bench/spare_runtime.py [--rounds 5] [--settle 8] [--json out.json]
    python bench/spare_runtime.py --models /tmp/zb/store --model zimage-random --device cuda \
        --size 1024 --steps 8 --compile auto off --settle 20 --rounds 1 --warmup 0
    (--cold drops the page cache before each first request; --spare on limits it to the spare.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_start import PEER, start  # noqa: E402
from server_overhead import free_port  # noqa: E402

PROMPT = "a large red circle at the top left on a blue background"


def first_images(args, store: str, spare: str, compile_mode: str) -> tuple[float, float, float, dict]:
    """(first request s, its load_duration s, second request s, the first's stage timings) on a
    fresh server."""
    port = free_port()
    env = {**os.environ, "OLLIMG_HOST": f"127.0.0.1:{port}", "OLLIMG_MODELS": store, "OLLIMG_BACKEND": "torch",
           "OLLIMG_DEVICE": args.device, "OLLIMG_SPARE_RUNTIME": spare, "OLLIMG_COMPILE": compile_mode}
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([sys.executable, "-m", "ollimg", "serve"], env=env, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        time.sleep(args.settle)
        if args.cold:  # the weights (and the compile cache's files) come from the disk
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        request = {"model": args.model, "prompt": PROMPT, "seed": 0, "stream": False}
        if args.size:
            request.update(width=args.size, height=args.size)
        if args.steps:
            request["steps"] = args.steps
        times = []
        for _ in range(2):
            started = time.perf_counter()
            r = httpx.post(url + "/api/generate", json=request, timeout=600)
            r.raise_for_status()
            times.append((time.perf_counter() - started, r.json()["load_duration"] / 1e9, r.json()["timings"]))
        return times[0][0], times[0][1], times[1][0], times[0][2]
    except Exception:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-4000:])  # the server's own account
        raise
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
        log.close()


def main() -> None:
    from ollimg.builtin import builtin_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settle", type=float, default=8.0)
    parser.add_argument("--models", help="the store (default: a new one; the built-in shapes model is imported)")
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--compile", nargs="+", default=["auto"], help="OLLIMG_COMPILE settings to run")
    parser.add_argument("--spare", nargs="+", default=["on", "off"], help="OLLIMG_SPARE_RUNTIME settings to run")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each first request (root)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and dropped (page and compile caches)")
    parser.add_argument("--json")
    args = parser.parse_args()
    peer = args.model == "shapes" and args.device == "cpu"
    settings = [(spare, mode) for mode in args.compile for spare in args.spare]
    rows: dict[str, list] = {f"spare {spare}, compile {mode}": [] for spare, mode in settings}
    with tempfile.TemporaryDirectory() as scratch:
        store = args.models or scratch
        for _ in range(args.warmup + args.rounds):  # a first round imports shapes into the store, warms caches
            for spare, mode in settings:
                rows[f"spare {spare}, compile {mode}"].append(first_images(args, store, spare, mode))
            if peer:
                rows.setdefault("diffusers", []).append(start(PEER, str(builtin_models()["shapes"])))
    figures = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
               "load_average": os.getloadavg(), "rounds": args.rounds, "settle": args.settle, "model": args.model,
               "device": args.device, "cold": args.cold}
    for name in [n for n in rows if n != "diffusers"]:
        runs = rows[name][args.warmup:]
        figures[name] = {"first request": round(statistics.median(r[0] for r in runs), 2),
                         "first request min": round(min(r[0] for r in runs), 2),
                         "its load": round(statistics.median(r[1] for r in runs), 2),
                         "second request": round(statistics.median(r[2] for r in runs), 2),
                         "first request's stages": [{k: round(v, 3) for k, v in r[3].items()} for r in runs]}
    if peer:
        runs = rows["diffusers"][args.warmup:]
        figures["diffusers"] = {"loaded": round(statistics.median(r[0] for r in runs), 2),
                                "first image": round(statistics.median(r[1] for r in runs), 2)}
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
