"""Thread-safe, throttled delivery of Progress from the transfer threads to one callback.

The callback is called under a lock, so it never runs twice at once; it may raise (e.g.
Cancelled) to stop the transfer. Per-blob updates come at most every STEP bytes, plus the last.
"""

from __future__ import annotations

import threading

from ollimg.progress import OnProgress, Progress

STEP = 1 << 20


def short(digest: str) -> str:
    """The 12 hex digits ollama shows for a blob: `pulling 8eeb52dfb3bb`."""
    return digest.split(":", 1)[1][:12]


class Reporter:
    def __init__(self, on_progress: OnProgress | None):
        self._fn = on_progress
        self._lock = threading.Lock()
        self._sent: dict[str, int] = {}

    def status(self, status: str) -> None:
        self._emit(Progress(status))

    def blob(self, verb: str, digest: str, completed: int, total: int) -> None:
        """`<verb> <12hex>` with bytes done; skipped unless STEP bytes passed, it starts or it ends."""
        last = self._sent.get(digest)
        if last is not None and completed != total and 0 <= completed - last < STEP:
            return
        self._sent[digest] = completed
        self._emit(Progress(f"{verb} {short(digest)}", digest, completed, total))

    def _emit(self, progress: Progress) -> None:
        if self._fn is not None:
            with self._lock:
                self._fn(progress)
