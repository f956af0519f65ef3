"""Model routes: list, built-in, show, running, delete, copy, and the streamed create, pull and push."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ollimg import api
from ollimg import builtin, models, registry
from ollimg.create import create as create_model
from ollimg.errors import InvalidInput, OllimgError
from ollimg.manifest import Name
from ollimg.progress import Progress
from ollimg.server import defaults
from ollimg.server.jobs import Job
from ollimg.server.routes.common import NDJSON, details, error_line, get_model, iso, line, scheduler, store, without_paths
from ollimg.server.scheduler import key

router = APIRouter(tags=["native"])

ERRORS = {s: {"model": api.Error} for s in (400, 401, 403, 404, 500, 501, 502, 503, 507)}
PROGRESS = {
    200: {"description": "With stream (default): NDJSON ProgressResponse lines, the last one "
                         '{"status": "success"} (or a final {error, code} line).',
          "content": {NDJSON: {"schema": {"type": "string"}}}},
    **ERRORS,
}


@router.get("/api/tags", response_model=api.TagsResponse, responses=ERRORS)
def tags(request: Request) -> api.TagsResponse:
    return api.TagsResponse(models=[
        api.ModelInfo(
            name=m.name.display(), model=m.name.display(), modified_at=iso(m.modified), size=m.size,
            digest=m.digest, details=details(m),
        )
        for m in defaults.listed_models(store(request))
    ])


@router.get("/api/builtin", response_model=api.BuiltinResponse, responses=ERRORS)
def builtin_models(request: Request) -> api.BuiltinResponse:
    stored = {m.name.display() for m in store(request).models()}
    return api.BuiltinResponse(models=[
        api.BuiltinModel(name=Name.parse(name).display(), description=builtin.description(name),
                         stored=Name.parse(name).display() in stored)
        for name in builtin.builtin_models()
    ])


@router.get("/api/ps", response_model=api.PsResponse, responses=ERRORS)
def ps(request: Request) -> api.PsResponse:
    models = []
    sched = scheduler(request)
    for r in sched.running():
        rt = r.runtime
        processor = str(getattr(rt, "processor", "") or "CPU")
        host, gpu = sched.usage(r)
        models.append(api.RunningModel(
            name=r.model.name.display(), model=r.model.name.display(), size=host + gpu, digest=r.model.digest,
            details=details(r.model), expires_at=iso(r.expires_at), size_vram=gpu, processor=processor, busy=r.busy,
            waiting=max(0, r.users - r.busy), pid=getattr(rt, "pid", None),
        ))
    return api.PsResponse(models=models)


@router.post("/api/show", response_model=api.ShowResponse, responses=ERRORS)
def show(body: api.ShowRequest, request: Request) -> api.ShowResponse:
    model = get_model(request, _required(body))
    cfg = model.config
    return api.ShowResponse(
        name=model.name.display(), digest=model.digest, size=model.size, modified_at=iso(model.modified),
        details=details(model), capabilities=list(cfg.get("capabilities") or ["image"]),
        parameters=_parameters_text(cfg.get("defaults") or {}), license=str(cfg.get("license") or ""),
        description=str(cfg.get("description") or ""), model_info=without_paths(cfg) if body.verbose else {},
        tensors=len(model.manifest.tensor_layers()), files=sorted(model.files()), info=without_paths(models.info(model)),
    )


@router.delete("/api/delete", response_model=api.DeleteResponse, responses=ERRORS)
async def delete(body: api.ModelRequest, request: Request) -> api.DeleteResponse:
    name = Name.parse(_required(body))
    await scheduler(request).unload(key(name))
    removed = await asyncio.to_thread(models.remove, store(request), [name])
    return api.DeleteResponse(deleted=removed.names, blobs=removed.blobs, bytes=removed.bytes)


@router.post("/api/copy", responses={200: {"description": "copied"}, **ERRORS})
async def copy(body: api.CopyRequest, request: Request) -> JSONResponse:
    source, destination = Name.parse(body.source), Name.parse(body.destination)
    await asyncio.to_thread(models.copy, store(request), source, destination)
    return JSONResponse({})


@router.post("/api/create", response_model=api.ProgressResponse, responses=PROGRESS)
async def create(body: api.CreateRequest, request: Request):
    call = functools.partial(
        create_model, store(request), Name.parse(_required(body)), body.from_, quantize=body.quantize, dtype=body.dtype,
    )
    return await _progress(request, call, body.stream)


@router.post("/api/pull", response_model=api.ProgressResponse, responses=PROGRESS)
async def pull(body: api.PullRequest, request: Request):
    name = Name.parse(_required(body))
    if builtin.source(name) is not None:
        return await _progress(request, functools.partial(builtin.pull, store(request), name), body.stream)
    # `insecure: false` (the ollama client always sends it) means automatic, as for ollama: plain HTTP
    # for loopback registries only
    call = functools.partial(registry.pull, store(request), name, insecure=body.insecure or None)
    return await _progress(request, call, body.stream)


@router.post("/api/push", response_model=api.ProgressResponse, responses=PROGRESS)
async def push(body: api.PushRequest, request: Request):
    call = functools.partial(registry.push, store(request), Name.parse(_required(body)), insecure=body.insecure or None)
    return await _progress(request, call, body.stream)


async def _progress(request: Request, call: Callable[..., Any], stream: bool):
    """Runs a library operation that reports Progress in a thread; streams it as NDJSON."""

    async def work(emit):
        loop = asyncio.get_running_loop()
        on_progress = lambda p: loop.call_soon_threadsafe(emit, "progress", p)  # noqa: E731
        return await asyncio.to_thread(call, on_progress=on_progress)

    job = Job(request, work)
    first, result = await job.begin("progress", stream)
    if not stream:
        return JSONResponse(_success(result).model_dump(exclude_none=True))
    return StreamingResponse(progress_lines(job, first), media_type=NDJSON)


async def progress_lines(job: Job, first: tuple[str, Any],
                         success: Callable[[Any], Any] | None = None) -> AsyncIterator[bytes]:
    """A job's Progress as NDJSON lines, then `success(result)` (default: `{"status": "success"}`
    with the model's digest and byte counts) or the error line."""
    success = success or _success
    async def events():
        yield first
        if first[0] not in ("done", "error"):
            async for event in job.events():
                yield event

    try:
        async for kind, value in events():
            if kind == "progress":
                assert isinstance(value, Progress)
                if value.status != "success":  # the final line says it, once
                    yield line(value.to_json())
            elif kind == "done":
                yield line(success(value))
            elif kind == "error":
                assert isinstance(value, OllimgError)
                yield error_line(value)
    finally:
        job.close()


def _success(result: Any) -> api.ProgressResponse:
    """The last line: success, with the model's digest and byte counts when the operation returned a Model."""
    return api.ProgressResponse(
        status="success", digest=getattr(result, "digest", None),
        new_bytes=getattr(result, "new_bytes", None), deduplicated_bytes=getattr(result, "deduplicated_bytes", None),
    )


def _parameters_text(defaults: dict) -> str:
    """ollama's `parameters` form: one `name value` per line (`steps 8\nguidance 0`)."""
    return "\n".join(f"{k} {v}" for k, v in defaults.items())


def _required(body: api.ModelRequest) -> str:
    name = body.model_name()
    if not name:
        raise InvalidInput("model is required")
    return name
