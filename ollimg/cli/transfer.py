"""`pull` and `push` for the CLI: the transfer itself (`transfer()`, through a running server or on
the local store) and its progress (also drawn for `save` and `load`): one rich bar (bytes, rate, ETA) on a terminal's stderr, plain
lines on any other stderr, and with `--json` every Progress as one NDJSON line on stdout (the same
lines the server's /api/pull and /api/push stream).

Bytes already present (in the store, the registry, or from an interrupted run) are shown as such
and never count towards the rate.
"""

from __future__ import annotations

import json
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress as Bar, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from ollimg.progress import Progress

SKIPPED = ("skipping", "mounting")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class TransferDisplay:
    """Call it with each Progress; use it as a context manager around the transfer."""

    def __init__(self, verb: str, json_output: bool = False):
        self.verb = verb
        self.mode = "json" if json_output else ("rich" if sys.stderr.isatty() else "plain")
        self.blobs: dict[str, list[int]] = {}  # digest -> [bytes present at the start, bytes done, total]
        self.present = 0
        self.started: float | None = None
        self.printed = 0.0
        self.dirty = False  # blob progress not yet shown
        self.drawn = 0.0
        self.bar: Bar | None = None
        self.task = None

    def __enter__(self) -> "TransferDisplay":
        if self.mode == "rich":
            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                           TimeRemainingColumn(), console=Console(stderr=True))
            self.task = self.bar.add_task(self.verb, total=None)
            self.bar.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.dirty and (self.bar is not None or exc_type is None):
            self._draw(force=True)
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, progress: Progress) -> None:
        if self.mode == "json":
            sys.stdout.write(json.dumps(progress.to_json()) + "\n")
            sys.stdout.flush()
            return
        # The server's success names the model's digest; a status with bytes but no digest (an
        # archive sent to or from the server) is drawn as one item.
        if progress.status == "success" or (progress.digest is None and progress.completed is None):
            self._status(progress.status)
            return
        if self.started is None:
            self.started = time.monotonic()
        completed, total = progress.completed or 0, progress.total or 0
        key = progress.digest or progress.status
        if progress.status.split(" ")[0] in SKIPPED:
            self.blobs.pop(key, None)
            self.present += total
        else:
            entry = self.blobs.setdefault(key, [completed, completed, total])
            entry[1] = completed
        self.dirty = True
        self._draw()

    def totals(self) -> tuple[int, int, int, int]:
        """(bytes to move, bytes moved, blobs done, blobs to move)."""
        to_move = sum(total - first for first, _, total in self.blobs.values())
        moved = sum(max(done - first, 0) for first, done, _ in self.blobs.values())
        done = sum(1 for _, d, total in self.blobs.values() if d >= total)
        return to_move, moved, done, len(self.blobs)

    def _describe(self) -> str:
        _, _, done, count = self.totals()
        text = f"{self.verb} {done}/{count} blobs" if all(k.startswith("sha256:") for k in self.blobs) else self.verb
        return text + (f" ({human_bytes(self.present)} already there)" if self.present else "")

    def _draw(self, force: bool = False) -> None:
        if self.bar is None:
            self._line(force)
            return
        # The bar is redrawn 10 times a second; an update per Progress (thousands, each summing
        # every blob) would cost more CPU than a load's parsing.
        now = time.monotonic()
        if force or now - self.drawn >= 0.1:
            self.drawn, self.dirty = now, False
            to_move, moved, _, _ = self.totals()
            self.bar.update(self.task, description=self._describe(), total=to_move, completed=moved)

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.printed < 1.0:
            return
        self.printed, self.dirty = now, False
        to_move, moved, _, _ = self.totals()
        rate = moved / max(now - (self.started or now), 1e-3)
        percent = f" ({100 * moved // to_move}%)" if to_move else ""
        sys.stderr.write(f"{self._describe()}: {human_bytes(moved)} of {human_bytes(to_move)}{percent}, {human_bytes(rate)}/s\n")
        sys.stderr.flush()

    def _status(self, status: str) -> None:
        if self.bar is not None:
            self.bar.console.print(status)
            return
        if self.dirty:
            self._line(force=True)
        sys.stderr.write(status + "\n")
        sys.stderr.flush()


def transfer(verb: str, name: str, insecure: bool, concurrency: int | None, json_output: bool) -> None:
    """`pull` or `push` NAME: through a running server (its store), else on the local store."""
    from ollimg import builtin, registry
    from ollimg.cli.connect import running_client
    from ollimg.manifest import Name, Store

    client = running_client()
    with TransferDisplay(f"{verb}ing", json_output) as display:
        if client is not None:  # the server transfers with its own store and concurrency setting
            with client:
                getattr(client, verb)(name, insecure=insecure or None, on_progress=display)
        elif verb == "pull" and builtin.source(Name.parse(name)) is not None:
            builtin.pull(Store(), Name.parse(name), on_progress=display)
        else:
            getattr(registry, verb)(Store(), name, insecure=insecure or None, concurrency=concurrency,
                                    on_progress=display)
