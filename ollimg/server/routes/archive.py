"""Archive routes: `POST /api/save` answers with an OCI image layout tar of stored models, `POST
/api/load` reads one from the request body. The format lives in `ollimg.archive`; these only move
bytes between it and HTTP, a few chunks at a time in each direction.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from ollimg import api, archive
from ollimg.errors import Cancelled
from ollimg.manifest import Name
from ollimg.server.routes.common import get_model, store
from ollimg.server.routes.models import ERRORS

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


@router.post("/api/load", response_model=api.LoadResponse, responses=ERRORS, openapi_extra={
    "requestBody": {"required": True, "description": "A .tar or .tar.zst archive of an OCI image layout (ollimg save).",
                    "content": {"application/octet-stream": BINARY}},
})
async def load(request: Request) -> api.LoadResponse:
    loop = asyncio.get_running_loop()
    pieces = _pieces(request.stream())

    async def next_piece() -> bytes | None:
        return await anext(pieces, None)

    def chunks() -> Iterator[bytes]:  # runs on the loader's reading thread
        while True:
            try:
                piece = asyncio.run_coroutine_threadsafe(next_piece(), loop).result()
            except ClientDisconnect:
                raise Cancelled("cancelled: the client went away") from None
            if piece is None:
                return
            yield piece

    try:
        loaded = await asyncio.to_thread(archive.load, store(request), chunks())
    except BaseException:
        try:  # read the rest, so the client gets this answer instead of a broken pipe mid-upload
            async for _ in pieces:
                pass
        except (ClientDisconnect, RuntimeError):  # gone, or the reading thread still waits on a piece
            pass
        raise
    return api.LoadResponse(models=[m.name.display() for m in loaded.models], new_bytes=loaded.new_bytes,
                            deduplicated_bytes=loaded.deduplicated_bytes)


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
