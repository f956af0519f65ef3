"""A request's work running in its own task, its events flowing through a queue to the response.

The task is cancelled when the client disconnects (a watcher waits for `http.disconnect`) or when
the response is closed; the scheduler turns that cancellation into runtime.cancel(). Imports errors and routes.common.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.requests import Request

from ollimg.errors import Cancelled, OllimgError
from ollimg.server.routes.common import internal_error

log = logging.getLogger(__name__)

Emit = Callable[[str, Any], None]
FINAL = ("done", "error")


class Job:
    """Runs `work(emit)`; events are (kind, value): whatever work emits, then ("done", result) or ("error", exc)."""

    def __init__(self, request: Request, work: Callable[[Emit], Awaitable[Any]], watch: bool = True):
        """`watch` False: no watcher reads `receive()`, for work that reads the request body itself
        (it sees the client go away as the body breaking off)."""
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._task = asyncio.create_task(self._main(work))
        self._watch = asyncio.create_task(self._watch_disconnect(request)) if watch else None

    def emit(self, kind: str, value: Any = None) -> None:
        self._events.put_nowait((kind, value))

    async def next(self, timeout: float | None = None) -> tuple[str, Any]:
        """The next event; raises TimeoutError when none comes within `timeout` seconds."""
        return await asyncio.wait_for(self._events.get(), timeout)

    async def until(self, *kinds: str) -> tuple[str, Any]:
        """Skips events until one of `kinds` (or the final event) arrives; raises the job's error."""
        while True:
            kind, value = await self.next()
            if kind == "error":
                raise value
            if kind in kinds or kind in FINAL:
                return kind, value

    async def begin(self, kind: str, stream: bool) -> tuple[tuple[str, Any], Any]:
        """The first `kind` event (so errors up to there leave with a real HTTP status) and, unless
        `stream`, the result too. The job is closed on failure, and once the result is in."""
        try:
            first = await self.until(kind)
            done = first if first[0] == "done" or stream else await self.until("done")
        except BaseException:
            self.close()
            raise
        if stream:
            return first, None
        self.close()
        return first, done[1]

    async def events(self, keepalive: float | None = None) -> AsyncIterator[tuple[str, Any]]:
        """Every event up to and including the final one; ("keepalive", None) after `keepalive` idle seconds."""
        while True:
            try:
                kind, value = await self.next(keepalive)
            except TimeoutError:
                yield "keepalive", None
                continue
            yield kind, value
            if kind in FINAL:
                return

    def close(self) -> None:
        self._task.cancel()
        self._stop_watching()

    def _stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.cancel()

    async def _main(self, work: Callable[[Emit], Awaitable[Any]]) -> None:
        try:
            self.emit("done", await work(self.emit))
        except asyncio.CancelledError:
            self.emit("error", Cancelled("cancelled: the client went away"))
            raise
        except OllimgError as e:
            self.emit("error", e)
        except Exception as e:  # a request handler edge: log it, answer it
            log.exception("request failed")
            self.emit("error", internal_error(e))
        finally:
            self._stop_watching()

    async def _watch_disconnect(self, request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                if not self._task.done():
                    log.info("client went away: cancelling %s", request.url.path)
                    self._task.cancel()
                return
