"""Progress as data. It travels as a callback, then as NDJSON; only the CLI draws it.

`Reporter` delivers per-blob Progress of a transfer (pull, push, save, load) from any thread to one
callback, throttled. Imports nothing from the rest of ollimg.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Callable


@dataclass(frozen=True)
class Progress:
    """A transfer or import: `status` says what is happening; bytes `completed` of `total`."""

    status: str
    digest: str | None = None
    completed: int | None = None
    total: int | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Step:
    """A finished denoising step: `step` of `total` (1-based), seconds since generation started.

    Step 0 with a `status` says what happens before the first step when it takes long (the first
    run of a compiled graph: "optimizing for this GPU, once")."""

    step: int
    total: int
    elapsed: float = 0.0
    status: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Preview:
    """A live preview: number `index` (0-based, evenly spaced steps) of image `image` of the batch
    (0-based), at denoising step `step`, as PNG bytes."""

    index: int
    image: int
    step: int
    png: bytes


OnProgress = Callable[[Progress], None]
OnStep = Callable[[Step], None]
OnPreview = Callable[[Preview], None]


STEP = 1 << 20


def short(digest: str) -> str:
    """The 12 hex digits ollama shows for a blob: `pulling 8eeb52dfb3bb`."""
    return digest.split(":", 1)[1][:12]


class Reporter:
    """Thread-safe, throttled delivery of Progress to one callback.

    The callback is called under a lock, so it never runs twice at once; it may raise (e.g.
    Cancelled) to stop the transfer. Per-blob updates come at most every STEP bytes, plus the last.
    """

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
