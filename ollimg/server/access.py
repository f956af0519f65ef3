"""Who may call what, how much they may send, and the record of it: the API key rule, the body limit
and the access log, as ASGI middlewares the app installs.

`needs_key` is the one place that decides what OLLIMG_API_KEY protects: every route, every method
but CORS preflight, except the web page's HTML shell (`GET /`) and its static files under `/web/`,
which hold no data and ask for the key in the browser; every API they call needs it.
The body limit (OLLIMG_MAX_BODY) refuses a declared Content-Length at once and counts the bytes of
a chunked body as they arrive, so no body is read whole before it is known to be small enough;
two routes have a limit of their own instead: `/api/load` (its archive goes a piece at a time into
the store, as a pull's blobs do) and `/v1/images/edits` (its multipart upload, read up to
OLLIMG_MAX_UPLOAD and counted the same way by the route).
The access log (logger `ollimg.access`) has one line per request: client, method, path (no query
string), status, bytes sent, seconds. Imports config and errors; no route knows about these rules.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollimg import config
from ollimg.errors import AuthError, OllimgError, TooLarge

log = logging.getLogger("ollimg.access")

PUBLIC_PREFIXES = ("/web/",)  # the web page's static files (ollimg/server/web/)
ErrorResponse = Callable[[str, OllimgError], object]


def needs_key(method: str, path: str) -> bool:
    """Whether a request must carry OLLIMG_API_KEY (when one is set)."""
    if method == "OPTIONS":
        return False  # CORS preflight carries no credentials by design; the real request does
    if method in ("GET", "HEAD") and (path == "/" or path.startswith(PUBLIC_PREFIXES)):
        return False
    return True


class ApiKey:
    """When OLLIMG_API_KEY is set, a request `needs_key` names must carry `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, error_response: ErrorResponse):
        self.app, self.error_response = app, error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = config.api_key()
        if scope["type"] == "http" and key and needs_key(scope["method"], scope["path"]):
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            if not secrets.compare_digest(token.encode(), key.encode()):
                err = AuthError("missing or wrong API key: send Authorization: Bearer <OLLIMG_API_KEY>")
                response = self.error_response(scope["path"], err)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


OWN_LIMITS = ("/api/load", "/v1/images/edits")  # no OLLIMG_MAX_BODY: the store's stream, OLLIMG_MAX_UPLOAD


class BodyLimit:
    """Refuses bodies over OLLIMG_MAX_BODY with 413: by Content-Length before reading, else while
    reading; the OWN_LIMITS routes are left to their own."""

    def __init__(self, app: ASGIApp, error_response: ErrorResponse):
        self.app, self.error_response = app, error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OWN_LIMITS:
            await self.app(scope, receive, send)
            return
        limit = config.max_body()
        error = TooLarge(f"the request body is larger than {limit} bytes (OLLIMG_MAX_BODY); send less")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self.error_response(scope["path"], error)(scope, receive, send)
            return
        seen, started, refused = 0, False, False

        async def counted_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit and not started:
                    refused = True
                    raise _Refused()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # whatever the app makes of the refusal (FastAPI: a 400) is replaced by the 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _Refused:
            pass
        if refused:
            await self.error_response(scope["path"], error)(scope, receive, send)


class _Refused(Exception):
    """Raised out of `receive` when a body passes the limit; BodyLimit answers 413."""


class AccessLog:
    """One log line per HTTP request, written when its response has been sent (or it failed)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status, sent = 0, 0

        async def logged_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info('%s "%s %s" %s %d %.3fs', client[0], scope["method"], scope["path"], status or "-", sent,
                     time.monotonic() - started)
