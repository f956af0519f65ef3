"""The FastAPI app: factory, the HTTP rules every request passes, and the error shapes.

Rules, outermost first: the access log, a Host allowlist when listening on loopback (blocks DNS
rebinding), CORS (local origins plus OLLIMG_ORIGINS, as ollama does), the OLLIMG_API_KEY bearer
check when a key is set, the body size limit (the last three in access.py). Errors leave as
`{"error": "...", "code": "..."}` (plus `param`, the field at fault, when there is one) on the
native API and in OpenAI's shape under /v1, always with a real HTTP status, and never with a
traceback or a server path (those go to the log). Imports the scheduler and store; routes live in routes/.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

import ollimg
from ollimg import api, config
from ollimg.errors import Busy, InvalidInput, OllimgError
from ollimg.gallery import Gallery
from ollimg.hosts import is_loopback
from ollimg.manifest import Store
from ollimg.server.access import AccessLog, ApiKey, BodyLimit
from ollimg.server.routes.common import internal_error, openai_error, wire_message
from ollimg.server.scheduler import ProcessFactory, Scheduler

log = logging.getLogger(__name__)

CORS_HEADERS = [
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "OpenAI-Beta",
    "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval", "x-stainless-helper-method",
    "x-stainless-lang", "x-stainless-os", "x-stainless-package-version", "x-stainless-poll-helper",
    "x-stainless-retry-count", "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-timeout",
]
LOCAL_ORIGINS = [
    f"{scheme}://{host}{port}"
    for scheme in ("http", "https")
    for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
    for port in ("", ":*")
] + ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]


def create_app(scheduler: Scheduler | None = None, store: Store | None = None, bind_host: str | None = None) -> FastAPI:
    """The server app. Without a scheduler, one with real runtime processes is made on startup."""
    store = store or Store()
    bind_host = bind_host if bind_host is not None else config.host()[0]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        owned = getattr(app.state, "scheduler", None) is None  # a scheduler passed in is its caller's to close
        if owned:
            app.state.scheduler = Scheduler(ProcessFactory(store))
        try:
            yield
        finally:
            if owned:
                await app.state.scheduler.close()

    app = FastAPI(
        title="ollimg",
        version=ollimg.__version__,
        description="Local text-to-image server: a native API (NDJSON streams) and an OpenAI-compatible images API.",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.scheduler = scheduler
    app.state.gallery = Gallery(config.gallery_dir(), config.gallery_max())

    from ollimg.server.routes import archive, gallery, generate, models, openai, sdapi, web

    app.include_router(generate.router)
    app.include_router(models.router)
    app.include_router(openai.router)
    app.include_router(sdapi.router)
    app.include_router(archive.router)
    app.include_router(gallery.router)
    app.include_router(web.router)

    @app.get("/api/version", response_model=api.VersionResponse, tags=["server"])
    def version() -> api.VersionResponse:
        return api.VersionResponse(version=ollimg.__version__)

    app.add_exception_handler(OllimgError, _ollimg_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

    app.add_middleware(BodyLimit, error_response=error_response)
    app.add_middleware(ApiKey, error_response=error_response)
    app.add_middleware(_JsonBody)
    app.add_middleware(
        _Cors,
        allow_origin_regex=_origin_regex(LOCAL_ORIGINS + config.origins()),
        allow_methods=["*"],
        allow_headers=CORS_HEADERS,
        expose_headers=["Retry-After", "x-should-retry"],
    )
    if is_loopback(bind_host):
        app.add_middleware(_HostAllowlist)
    app.add_middleware(AccessLog)
    return app


# -- errors ------------------------------------------------------------------------------------


def error_response(path: str, e: OllimgError, param: str | None = None) -> JSONResponse:
    """The one place an OllimgError becomes an HTTP answer (native or OpenAI shape by path)."""
    status = e.http_status if 400 <= e.http_status < 600 else 500
    headers = {}
    if isinstance(e, Busy):
        headers["Retry-After"] = str(e.retry_after)
    elif not getattr(e, "retryable", False):
        headers["x-should-retry"] = "false"
    param = param or getattr(e, "param", None)
    if path.startswith("/v1"):
        body = openai_error(e, status, param).model_dump()
    else:
        body = api.Error(error=wire_message(e), code=e.code, param=param).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)




async def _ollimg_error(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, OllimgError)
    if e.http_status >= 500 and not isinstance(e, Busy):
        tail = (getattr(e, "stderr_tail", "") or "").strip()
        log.warning("%s %s: %s%s", request.method, request.url.path, e, f"\nruntime stderr:\n{tail}" if tail else "")
    return error_response(request.url.path, e)


async def _validation_error(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestValidationError)
    first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return error_response(request.url.path, InvalidInput("the request body is not valid JSON"))
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc)
    text = str(first.get("msg")).removeprefix("Value error, ")  # a validator's own message, as it is
    message = f"{field}: {text}" if field else text
    return error_response(request.url.path, InvalidInput(f"invalid request: {message}"), param=field or None)


NOT_IMAGES = ("/api/chat", "/api/embed", "/api/embeddings", "/v1/chat/completions", "/v1/completions",
              "/v1/embeddings", "/v1/responses")


async def _http_error(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, HTTPException)
    message = str(e.detail)
    if e.status_code == 404 and message == "Not Found":  # no such route: say what there is
        path = request.url.path.rstrip("/")
        message = (f"{path}: ollimg makes images and has no chat or embeddings; use /api/generate or "
                   "/v1/images/generations" if path in NOT_IMAGES else
                   f"no endpoint {request.method} {path}; the API is listed at /docs")
    err = OllimgError(message, code="not_found" if e.status_code == 404 else "http_error")
    err.http_status = e.status_code
    response = error_response(request.url.path, err)
    response.headers.update(e.headers or {})
    return response


async def _unexpected_error(request: Request, e: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return error_response(request.url.path, internal_error(e))



# -- HTTP rules --------------------------------------------------------------------------------


class _Cors(CORSMiddleware):
    def preflight_response(self, request_headers: Any) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:  # ollama answers preflight with 204 No Content
            headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
            return Response(status_code=204, headers=headers)
        return response


class _HostAllowlist:
    """On loopback, only requests whose Host is local reach the app: DNS rebinding gets 403."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.hostname = socket.gethostname().lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not self.allowed(host):
                err = OllimgError(f"host {host!r} is not allowed: use localhost or the machine's address", code="forbidden")
                err.http_status = 403
                await error_response(scope["path"], err)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def allowed(self, host: str) -> bool:
        name = re.sub(r":\d+$", "", host.strip().lower()).strip("[]")
        if not name or name in ("localhost", self.hostname):
            return True
        if name.endswith((".localhost", ".local", ".internal")):
            return True
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            return False
        return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local


class _JsonBody:
    """Bodies sent to /api and /sdapi without a JSON Content-Type are read as JSON, as ollama does:
    its documented `curl .../api/generate -d '{...}'` sends application/x-www-form-urlencoded."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(("/api/", "/sdapi/")):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            given = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
            if given in (b"", b"application/x-www-form-urlencoded", b"text/plain"):
                scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def _origin_regex(patterns: list[str]) -> str:
    if "*" in patterns:
        return ".*"
    return "|".join(re.escape(p).replace(r"\*", ".*") for p in patterns)
