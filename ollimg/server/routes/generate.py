"""`POST /api/generate`: NDJSON step progress (and previews on request), then the images; an empty
prompt loads or unloads. With `gallery`, the images are also kept in the gallery (routes/gallery.py).
With `images` (base64), an edit: the first image is redrawn by `strength`, inside `mask` if given.
"""

from __future__ import annotations

import base64
import time
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ollimg import api, input_images
from ollimg.calibrate import check_teacache
from ollimg.errors import InvalidInput, OllimgError
from ollimg.progress import Preview, Step
from ollimg.runtime.request import GenerateRequest, GenerateResult
from ollimg.server import defaults
from ollimg.server.jobs import Job
from ollimg.server.routes import gallery
from ollimg.server.routes.common import NDJSON, error_line, get_model, line, now, scheduler
from ollimg.server.scheduler import key

router = APIRouter(tags=["native"])

ERRORS = {s: {"model": api.Error} for s in (400, 401, 403, 404, 499, 500, 503, 507)}


@router.post(
    "/api/generate",
    response_model=api.GenerateResponse,
    responses={
        200: {"description": "With stream (default): NDJSON lines of GenerateStep, then a GenerateResponse "
                             "(or a final {error, code} line).",
              "content": {NDJSON: {"schema": {"type": "string"}}}},
        **ERRORS,
    },
)
async def generate(body: api.GenerateRequest, request: Request):
    started = time.monotonic()
    sched = scheduler(request)
    model = get_model(request, body.model)
    keep_alive = sched.keep_alive(body.keep_alive)
    name = model.name.display()
    if not body.prompt:
        if keep_alive == 0:
            await sched.unload(key(model.name))
            return api.GenerateResponse(model=name, created_at=now(), done_reason="unload")
        seconds = await sched.load(model, keep_alive=keep_alive)
        return api.GenerateResponse(model=name, created_at=now(), done_reason="load", load_duration=int(seconds * 1e9))

    asked = defaults.without_stock(model, defaults.Settings(body.steps, body.guidance, body.width, body.height))
    try:
        images, mask, digests = input_images.prepare([input_images.from_base64(i, "images") for i in body.images or []],
                                                     input_images.from_base64(body.mask, "mask") if body.mask else None)
    except InvalidInput as e:
        e.param = "mask" if "mask" in e.message else "images"
        raise
    if body.strength is not None and not images:
        raise InvalidInput("strength needs images: send the image to edit in images", param="strength")
    req = GenerateRequest(
        prompt=body.prompt, negative_prompt=body.negative_prompt, width=asked.width, height=asked.height,
        steps=asked.steps, guidance=asked.guidance, seed=body.seed, n=body.n, format=body.format,
        compression=body.compression, previews=body.previews if body.stream else 0, model_name=name,
        images=images, mask=mask, strength=body.strength, image_digests=digests,
        cfg_truncation=body.cfg_truncation, cfg_normalization=body.cfg_normalization,
        teacache=check_teacache(model, body.teacache),
    )

    async def work(emit):
        result = await sched.generate(
            model, req, keep_alive=keep_alive, on_load=lambda s: emit("load", s),
            on_step=lambda s: emit("step", s), on_preview=lambda p: emit("preview", p),
        )
        ids = await gallery.keep(request, name, model.digest, req, result) if body.gallery else []
        return result, ids

    job = Job(request, work)
    (_, load_seconds), done = await job.begin("load", body.stream)
    if not body.stream:
        return JSONResponse(_final(name, body.format, done, load_seconds, started).model_dump())
    return StreamingResponse(_stream(job, name, body.format, load_seconds, started), media_type=NDJSON)


async def _stream(job: Job, name: str, fmt: str, load_seconds: float, started: float) -> AsyncIterator[bytes]:
    try:
        async for kind, value in job.events():
            if kind == "step":
                assert isinstance(value, Step)
                yield line(api.GenerateStep(model=name, created_at=now(), step=value.step, completed=value.step,
                                            total=value.total, elapsed=value.elapsed, status=value.status))
            elif kind == "preview":
                assert isinstance(value, Preview)
                yield line(api.GeneratePreview(model=name, preview=base64.b64encode(value.png).decode(), index=value.index,
                                               image_index=value.image, step=value.step or None))
            elif kind == "done":
                yield line(_final(name, fmt, value, load_seconds, started))
            elif kind == "error":
                assert isinstance(value, OllimgError)
                yield error_line(value)
    finally:
        job.close()


def _final(name: str, fmt: str, done: tuple[GenerateResult, list[str]], load_seconds: float,
           started: float) -> api.GenerateResponse:
    result, gallery_ids = done
    images = [base64.b64encode(b).decode() for b in result.images]
    return api.GenerateResponse(
        model=name, created_at=now(), images=images, image=images[0] if images else None, format=fmt,
        seed=result.seeds[0] if result.seeds else None, seeds=list(result.seeds), width=result.width,
        height=result.height, steps=result.steps, guidance=result.guidance, strength=result.strength,
        timings=dict(result.timings),
        load_duration=int(load_seconds * 1e9), total_duration=int((time.monotonic() - started) * 1e9),
        gallery_ids=gallery_ids,
    )
