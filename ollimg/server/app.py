"""The FastAPI app: factory, the HTTP rules every request passes, and the error shapes.

Rules, outermost first: a Host allowlist when listening on loopback (blocks DNS rebinding), CORS
(local origins plus OLLIMG_ORIGINS, as ollama does), the OLLIMG_API_KEY bearer check when a key is
set. Errors leave as `{"error": "...", "code": "..."}` (plus `param`, the field at fault, when there is
one) on the native API and in OpenAI's shape under /v1, always with a real HTTP status. Imports the scheduler and store; routes live in routes/.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import secrets
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
from ollimg.errors import AuthError, Busy, InvalidInput, OllimgError
from ollimg.gallery import Gallery
from ollimg.hosts import is_loopback
from ollimg.manifest import Store
from ollimg.server.routes.common import openai_error, wire_message
from ollimg.server.scheduler import Scheduler, process_factory

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
        if getattr(app.state, "scheduler", None) is None:
            app.state.scheduler = Scheduler(process_factory(store))
        try:
            yield
        finally:
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

    app.add_middleware(_ApiKey)
    app.add_middleware(
        _Cors,
        allow_origin_regex=_origin_regex(LOCAL_ORIGINS + config.origins()),
        allow_methods=["*"],
        allow_headers=CORS_HEADERS,
        expose_headers=["Retry-After", "x-should-retry"],
    )
    if is_loopback(bind_host):
        app.add_middleware(_HostAllowlist)
    return app


# -- errors ------------------------------------------------------------------------------------


def error_response(path: str, e: OllimgError, param: str | None = None) -> JSONResponse:
    """The one place an OllimgError becomes an HTTP answer (native or OpenAI shape by path)."""
    status = e.http_status if 400 <= e.http_status < 600 else 500
    headers = {}
    if isinstance(e, Busy):
        headers["Retry-After"] = str(getattr(e, "retry_after", 5))
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
        log.warning("%s %s: %s", request.method, request.url.path, e)
    return error_response(request.url.path, e)


async def _validation_error(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestValidationError)
    first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return error_response(request.url.path, InvalidInput("the request body is not valid JSON"))
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc)
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    return error_response(request.url.path, InvalidInput(f"invalid request: {message}"), param=field or None)


async def _http_error(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, HTTPException)
    err = OllimgError(str(e.detail), code="not_found" if e.status_code == 404 else "http_error")
    err.http_status = e.status_code
    response = error_response(request.url.path, err)
    response.headers.update(e.headers or {})
    return response


async def _unexpected_error(request: Request, e: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return error_response(request.url.path, OllimgError(f"internal error: {type(e).__name__}: {e}", code="internal"))


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


class _ApiKey:
    """When OLLIMG_API_KEY is set, every API request must carry `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = config.api_key()
        path = scope.get("path", "")
        if scope["type"] == "http" and key and path.startswith(("/api/", "/v1/")) and scope["method"] != "OPTIONS":
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            if not secrets.compare_digest(token.encode(), key.encode()):
                err = AuthError("missing or wrong API key: send Authorization: Bearer <OLLIMG_API_KEY>")
                response = error_response(path, err)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _origin_regex(patterns: list[str]) -> str:
    if "*" in patterns:
        return ".*"
    return "|".join(re.escape(p).replace(r"\*", ".*") for p in patterns)
