"""OpenAI-compatible routes: `GET /v1/models[/{id}]`, `POST /v1/images/generations` (JSON) and
`POST /v1/images/edits` (multipart: `image` or `image[]`, optional `mask`), answered as JSON or SSE.

Streaming sends `image_generation.partial_image` (`image_edit.` for edits) when `partial_images` >
0, `partial_images` of them per image of the batch (each with OpenAI's `partial_image_index` and
the extra `image_index`, 0-based), and one `image_generation.completed` (`image_edit.completed`)
per image, in order, with its `image_index`; `event: progress` per
step (`{"type": "progress", "step", "total"}`) only when the request asks with the extra
`"progress": true` (the openai SDK would read them as empty partial images). `response_format: url`
is refused (400): images are returned inline only. No model, or one of OpenAI's names (dall-e-*,
gpt-image-*), means the default model; sizes are rounded to multiples of 16 as /sdapi does (the
answer's `size` says what was made). An edit upload over OLLIMG_MAX_UPLOAD is refused (413) while
it is read, before it is held whole (its only limit: the app's OLLIMG_MAX_BODY leaves it to this route).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from ollimg import api, config, input_images
from ollimg.calibrate import check_teacache
from ollimg.errors import InvalidInput, OllimgError, UploadTooLarge
from ollimg.manifest import Model
from ollimg.progress import Preview, Step
from ollimg.runtime.request import GenerateRequest, GenerateResult
from ollimg.server import defaults
from ollimg.server.jobs import Job
from ollimg.server.routes.common import get_model, openai_error, scheduler, store

router = APIRouter(tags=["openai"])

ERRORS = {s: {"model": api.OpenAIError} for s in (400, 401, 403, 404, 499, 500, 503, 507)}
SSE = "text/event-stream"
KEEPALIVE_SECONDS = 10.0
USAGE = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
         "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}}


@router.get("/v1/models", response_model=api.OpenAIModelList, responses=ERRORS)
def models(request: Request) -> api.OpenAIModelList:
    return api.OpenAIModelList(data=[_model_object(m) for m in defaults.listed_models(store(request))])


@router.get("/v1/models/{model_id:path}", response_model=api.OpenAIModel, responses=ERRORS)
def model(model_id: str, request: Request) -> api.OpenAIModel:
    return _model_object(_model(request, model_id))


def _model_object(m: Model) -> api.OpenAIModel:
    return api.OpenAIModel(id=m.name.display(), created=int(m.modified.timestamp()))


@router.post(
    "/v1/images/generations",
    response_model=api.ImagesResponse,
    responses={
        200: {"description": "With stream: server-sent events (progress, image_generation.partial_image, "
                             "image_generation.completed).",
              "content": {SSE: {"schema": {"type": "object", "description": "one event's data: {type, ...}"}}}},
        **ERRORS,
    },
)
async def generations(body: api.ImageGenerationRequest, request: Request):
    return await _images(request, body, "image_generation")


@router.post(
    "/v1/images/edits",
    response_model=api.ImagesResponse,
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image", "prompt"],
        "properties": {"image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary"},
                       "prompt": {"type": "string"}}}}}}},
    responses={
        200: {"description": "With stream: server-sent events (progress, image_edit.partial_image, image_edit.completed).",
              "content": {SSE: {"schema": {"type": "string"}}}},
        413: {"model": api.OpenAIError},
        **ERRORS,
    },
)
async def edits(request: Request):
    fields, images, mask = await _multipart(request)
    try:
        body = api.ImageEditRequest.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        text = first["msg"].removeprefix("Value error, ")  # a validator's own message, as it is
        raise _invalid(f"invalid {'.'.join(map(str, first['loc'])) or 'request'}: {text}",
                       str(first["loc"][0]) if first["loc"] else "request") from None
    if not images:
        raise _invalid("image is required: send the image to edit as a file part named image (or image[])", "image")
    try:
        encoded, mask_b64, digests = input_images.prepare(images, mask)
    except InvalidInput as e:
        e.param = "mask" if "mask" in e.message else "image"
        raise
    return await _images(request, body, "image_edit", images=encoded, mask=mask_b64, digests=digests)


async def _multipart(request: Request) -> tuple[dict[str, str], list[bytes], bytes | None]:
    """The form's text fields, its image files (`image`, `image[]`) and its mask, the body read
    only up to OLLIMG_MAX_UPLOAD."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise _invalid("images/edits takes multipart/form-data (image files and form fields)", "image")
    limit = config.max_upload()
    too_large = UploadTooLarge(f"the upload is larger than {limit} bytes (OLLIMG_MAX_UPLOAD): send smaller images")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large

    async def replay():
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=17, max_fields=64)
    except Exception as e:  # python-multipart's parse errors have no common base class
        raise _invalid(f"malformed multipart body: {e}", "image") from None
    fields: dict[str, str] = {}
    images: list[bytes] = []
    mask: bytes | None = None
    for name, value in form.multi_items():
        if isinstance(value, str):
            fields[name] = value
        elif name in ("image", "image[]"):
            images.append(await value.read())
        elif name == "mask":
            mask = await value.read()
        else:
            raise _invalid(f"unexpected file part {name!r}: send image (or image[]) and mask", name)
    return fields, images, mask


async def _images(request: Request, body: api.ImageGenerationRequest, kind: str, *, images: list[str] | None = None,
                  mask: str | None = None, digests: list[str] | None = None):
    """Runs a generation or an edit: JSON, or SSE events named `kind`.partial_image / `kind`.completed."""
    model = _model(request, body.model)
    width, height = api.parse_size(body.size, round16=True)
    if body.response_format == "url":
        raise _invalid("response_format 'url' is not supported: ollimg returns images inline; use b64_json", "response_format")
    if body.background == "transparent":
        raise _invalid("background 'transparent' is not supported by this model; use auto or opaque", "background")
    sched = scheduler(request)
    keep_alive = sched.keep_alive(body.keep_alive)
    fmt = body.output_format or "png"
    stream = bool(body.stream)
    asked = defaults.without_stock(model, defaults.Settings(body.steps, body.guidance_scale, width, height))
    req = GenerateRequest(
        prompt=body.prompt, negative_prompt=body.negative_prompt, width=asked.width, height=asked.height,
        steps=asked.steps, guidance=asked.guidance, seed=body.seed, n=body.n or 1, format=fmt, compression=body.output_compression,
        previews=(body.partial_images or 0) if stream else 0, model_name=model.name.display(),
        images=images or [], mask=mask, strength=getattr(body, "strength", None), image_digests=digests or [],
        cfg_truncation=body.cfg_truncation, cfg_normalization=body.cfg_normalization,
        teacache=check_teacache(model, body.teacache),
    )

    async def work(emit):
        return await sched.generate(
            model, req, keep_alive=keep_alive, on_load=lambda s: emit("load", s),
            on_step=lambda s: emit("step", s), on_preview=lambda p: emit("preview", p),
        )

    job = Job(request, work)
    try:
        _, result = await job.begin("load", stream)
    except OllimgError as e:
        if e.param == "images":  # the runtime names the native field; OpenAI's is `image`
            e.param = "image"
        raise
    if not stream:
        return JSONResponse(_response(result, fmt, body.quality).model_dump(exclude_none=True))
    return StreamingResponse(_events(job, fmt, body.quality, kind, bool(body.progress)), media_type=SSE,
                             headers={"Cache-Control": "no-cache"})


def _model(request: Request, name: str | None) -> Model:
    if not name or defaults.is_openai_name(name):
        return defaults.default_model(store(request))
    try:
        return get_model(request, name)
    except OllimgError as e:
        e.param = "model"
        raise


def _invalid(message: str, param: str) -> InvalidInput:
    e = InvalidInput(message)
    e.param = param
    return e


def _response(result: GenerateResult, fmt: str, quality: str | None) -> api.ImagesResponse:
    return api.ImagesResponse(
        created=int(time.time()),
        data=[api.ImageData(b64_json=base64.b64encode(img).decode(), seed=seed) for img, seed in zip(result.images, result.seeds)],
        output_format=fmt, size=f"{result.width}x{result.height}", quality=quality or "auto",
    )


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _events(job: Job, fmt: str, quality: str | None, kind_prefix: str, progress: bool) -> AsyncIterator[bytes]:
    common = {"quality": quality or "auto", "background": "opaque"}
    try:
        async for kind, value in job.events(keepalive=KEEPALIVE_SECONDS):
            if kind == "keepalive":
                yield b": keepalive\n\n"
            elif kind == "step" and progress:
                assert isinstance(value, Step)
                yield _sse("progress", {"type": "progress", "step": value.step, "total": value.total,
                                        **({"status": value.status} if value.status else {})})
            elif kind == "preview":
                assert isinstance(value, Preview)
                yield _sse(f"{kind_prefix}.partial_image", {
                    "type": f"{kind_prefix}.partial_image", "b64_json": base64.b64encode(value.png).decode(),
                    "partial_image_index": value.index, "image_index": value.image, "created_at": int(time.time()),
                    "size": "auto", "output_format": "png", **common,
                })
            elif kind == "done":
                size = f"{value.width}x{value.height}"
                for i, (img, seed) in enumerate(zip(value.images, value.seeds)):
                    yield _sse(f"{kind_prefix}.completed", {
                        "type": f"{kind_prefix}.completed", "b64_json": base64.b64encode(img).decode(),
                        "created_at": int(time.time()), "size": size, "output_format": fmt, "image_index": i,
                        "seed": seed, "usage": USAGE, **common,
                    })
            elif kind == "error":
                assert isinstance(value, OllimgError)
                body = openai_error(value, value.http_status).model_dump()
                yield _sse("error", {"type": "error", **body})
    finally:
        job.close()
