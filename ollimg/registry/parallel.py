"""Running transfer jobs on a bounded number of threads, stopping all of them at the first failure."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ollimg.errors import Cancelled

TICK = 0.5


def run_all(jobs: list[Callable[[], None]], workers: int, stop: threading.Event,
            tick: Callable[[], None] | None = None) -> None:
    """Runs `jobs` on up to `workers` threads. The first failure sets `stop` (jobs poll it), cancels
    the jobs not yet started, waits for the running ones and is raised. `tick` is called about
    every TICK seconds in the waiting thread while jobs run."""
    if not jobs:
        return
    settled = threading.Event()  # every job has ended, or one has failed
    lock = threading.Lock()
    remaining = len(jobs)

    def ended(future) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            if remaining == 0 or (not future.cancelled() and future.exception() is not None):
                settled.set()

    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="ollimg-transfer") as pool:
        futures = [pool.submit(job) for job in jobs]
        for future in futures:
            future.add_done_callback(ended)
        try:
            while not settled.wait(TICK if tick else None):
                tick()
        finally:  # also on KeyboardInterrupt in the waiting thread
            if stop.is_set() or any(f.done() and f.exception() for f in futures) or not all(f.done() for f in futures):
                stop.set()
                for f in futures:
                    f.cancel()
    errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
    if errors:
        real = [e for e in errors if not isinstance(e, Cancelled)]
        raise (real or errors)[0]
