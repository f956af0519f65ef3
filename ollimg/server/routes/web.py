"""The web page: `GET /` answers a browser (Accept: text/html) with the page and anything else
with "ollimg is running" (as ollama does); `GET /web/{file}` serves its scripts and styles.

The page's files live in ollimg/server/web/ (package data, no build step). They hold no data:
the page talks to the server only through the documented API, with the user's API key when one
is set, so these routes need none. Its Content-Security-Policy allows nothing but this server.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response

router = APIRouter(tags=["server"])

WEB = Path(__file__).resolve().parent.parent / "web"
FILES = {"app.js": "text/javascript", "style.css": "text/css", "icon.svg": "image/svg+xml"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("/", response_class=PlainTextResponse,
            responses={200: {"description": "the web page for browsers (Accept: text/html), else the text "
                                            "'ollimg is running'", "content": {"text/html": {}}}})
def root(request: Request) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return FileResponse(WEB / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)
    return PlainTextResponse("ollimg is running")


@router.get("/web/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    if name not in FILES:
        raise HTTPException(404, f"no such file: /web/{name}")
    return FileResponse(WEB / name, media_type=FILES[name], headers=HEADERS)
