"""Archive routes: `POST /api/save` answers with an OCI image layout tar of stored models, `POST
/api/load` reads one from the request body and streams its progress as NDJSON, as pull does. The
format lives in `ollimg.archive`; these only move bytes between it and HTTP, a few chunks at a time
in each direction.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from ollimg import api, archive
from ollimg.errors import Cancelled
from ollimg.manifest import Name
from ollimg.server.jobs import Job
from ollimg.server.routes.common import NDJSON, get_model, store
from ollimg.server.routes.models import ERRORS, progress_lines

router = APIRouter(tags=["native"])

PIECE = 1 << 20  # request body bytes handed to the loader at once
ARCHIVE_TYPES = {"tar.zst": "application/zstd", "tar": "application/x-tar"}
BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.post("/api/save", responses={
    200: {"description": "The archive: an OCI image layout in a tar, zstd-compressed unless format is tar "
                         "(then with a Content-Length).",
          "content": {media: BINARY for media in ARCHIVE_TYPES.values()}},
    **ERRORS,
}, response_class=StreamingResponse)
async def save(body: api.SaveRequest, request: Request) -> StreamingResponse:
    names = [Name.parse(n) for n in body.models]
    for name in names:  # 404 (or a built-in model's import) before the answer starts
        await asyncio.to_thread(get_model, request, str(name))
    layout = await asyncio.to_thread(archive.Archive, store(request), names)
    chunks = layout.chunks()
    headers = {"Content-Disposition": f'attachment; filename="models.{body.format}"'}
    if body.format == "tar":
        headers["Content-Length"] = str(layout.size)
    else:
        chunks = archive.compress(chunks, body.level or archive.DEFAULT_LEVEL)
    return StreamingResponse(chunks, media_type=ARCHIVE_TYPES[body.format], headers=headers)


LOAD = {
    200: {"description": "With stream (default): NDJSON ProgressResponse lines, the last a LoadResponse "
                         '(status "success"), or a final {error, code} line; with stream=false one LoadResponse.',
          "content": {NDJSON: {"schema": {"type": "string"}}}},
    **ERRORS,
}


@router.post("/api/load", response_model=api.LoadResponse, responses=LOAD, openapi_extra={
    "requestBody": {"required": True, "description": "A .tar or .tar.zst archive of an OCI image layout (ollimg save).",
                    "content": {"application/octet-stream": BINARY}},
})
async def load(request: Request, stream: bool = True):
    """Loads the archive as it arrives. What fails before the first blob (not an archive, no
    image layout) is a 4xx; after that, a final error line. Either way the answer goes out once
    the whole body is read, so an uploading client reads it rather than a broken pipe."""
    loop = asyncio.get_running_loop()
    body = _Body(request)

    def chunks() -> Iterator[bytes]:  # runs on the loader's reading thread
        while True:
            try:
                piece = asyncio.run_coroutine_threadsafe(body.next(), loop).result()
            except ClientDisconnect:
                raise Cancelled("cancelled: the client went away") from None
            if piece is None:
                return
            yield piece

    async def work(emit):
        on_progress = lambda p: loop.call_soon_threadsafe(emit, "progress", p)  # noqa: E731
        try:
            return await asyncio.to_thread(archive.load, store(request), chunks(), on_progress=on_progress)
        finally:
            await body.drain()

    job = Job(request, work, watch=False)  # receive() carries the body; its reader sees a disconnect
    first, result = await job.begin("progress", stream)
    if not stream:
        return JSONResponse(_loaded(result).model_dump())
    return _StreamAfterBody(progress_lines(job, first, _loaded), body.read)


def _loaded(loaded: archive.Loaded) -> api.LoadResponse:
    return api.LoadResponse(models=[m.name.display() for m in loaded.models], new_bytes=loaded.new_bytes,
                            deduplicated_bytes=loaded.deduplicated_bytes)


class _Body:
    """The request body in pieces of about PIECE bytes, for one reader at a time (the loader's
    thread, then `drain`)."""

    def __init__(self, request: Request):
        self._pieces = _pieces(request.stream())
        self._lock = asyncio.Lock()
        self.read = asyncio.Event()  # set once it has all arrived, or broke off

    async def next(self) -> bytes | None:
        async with self._lock:
            try:
                piece = await anext(self._pieces, None)
            except BaseException:
                self.read.set()
                raise
            if piece is None:
                self.read.set()
            return piece

    async def drain(self) -> None:
        """Reads what the loader left (after an error, or trailing bytes), so the answer is read."""
        try:
            while await self.next() is not None:
                pass
        except ClientDisconnect:
            pass


class _StreamAfterBody(StreamingResponse):
    """NDJSON lines that may start while the request body still arrives: starlette's check for a
    client that went away reads `receive()`, which carries the body until it is all read, so it
    waits for that."""

    def __init__(self, lines: AsyncIterator[bytes], body_read: asyncio.Event):
        super().__init__(lines, media_type=NDJSON)
        self.body_read = body_read

    async def listen_for_disconnect(self, receive) -> None:
        await self.body_read.wait()
        await super().listen_for_disconnect(receive)


async def _pieces(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body in pieces of about PIECE bytes (the server receives it in much smaller ones)."""
    parts: list[bytes] = []
    size = 0
    async for part in stream:
        parts.append(part)
        size += len(part)
        if size >= PIECE:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)
