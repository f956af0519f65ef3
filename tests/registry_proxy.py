"""A small front for a real registry, for tests: forwards every request and logs it, and on demand
throttles response bodies or acts as a Bearer-token registry (401 challenge, a `/token` endpoint
that checks Basic credentials, scoped tokens). An ASGI app served by uvicorn in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import threading
import time
from dataclasses import dataclass, field

import httpx
import uvicorn

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization", "host"}
_REPO = re.compile(r"^/v2/(.+?)/(blobs|manifests|tags)/")


@dataclass
class Hit:
    method: str
    path: str
    range: str | None
    status: int = 0
    sent: int = 0  # response body bytes sent


@dataclass
class Proxy:
    upstream: str
    throttle: float | None = None  # response body bytes per second, per response
    users: dict[str, str] | None = None  # when set: a Bearer-token registry with these Basic users
    ranges: bool = True  # False: drop Range headers, as a server without range support would
    fail_blob_gets: int = 0  # answer this many blob GETs with 503 first
    hits: list[Hit] = field(default_factory=list)
    token_requests: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self._tokens: dict[str, set[tuple[str, str]]] = {}
        self._server: uvicorn.Server | None = None
        self._client: httpx.AsyncClient | None = None  # made inside the server's event loop
        self.port = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Proxy":
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", interface="asgi3")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test proxy did not start")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(10)

    def blob_hits(self, digest: str) -> list[Hit]:
        return [h for h in self.hits if h.method == "GET" and h.path.endswith("/blobs/" + digest)]

    async def app(self, scope, receive, send) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        if self.users is not None:
            if path == "/token":
                return await self._token(scope, headers, send)
            if not self._authorized(scope, headers):
                return await self._challenge(scope, send)
        hit = Hit(scope["method"], path, headers.get("range"))
        self.hits.append(hit)
        if not self.ranges:
            headers.pop("range", None)
        if self.fail_blob_gets and scope["method"] == "GET" and "/blobs/sha256:" in path:
            self.fail_blob_gets -= 1
            hit.status = 503
            await send({"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"0")]})
            return await send({"type": "http.response.body", "body": b""})
        await self._forward(scope, receive, send, headers, hit)

    async def _forward(self, scope, receive, send, headers, hit) -> None:
        async def body():
            while True:
                message = await receive()
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return

        url = self.upstream + scope["path"] + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        forward = {k: v for k, v in headers.items() if k not in HOP and k != "authorization"}
        forward["host"] = headers.get("host", self.host)  # so the registry's Locations point at the proxy
        length = headers.get("content-length")
        content = body() if scope["method"] in ("PUT", "PATCH", "POST") and length != "0" else None
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=60)
        request = self._client.build_request(scope["method"], url, headers=forward, content=content)
        response = await self._client.send(request, stream=True)
        hit.status = response.status_code
        out = [(k.encode(), v.encode()) for k, v in response.headers.items() if k.lower() not in HOP]
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})
        async for chunk in response.aiter_raw(64 << 10):
            if self.throttle:
                await asyncio.sleep(len(chunk) / self.throttle)
            hit.sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await response.aclose()
        await send({"type": "http.response.body", "body": b""})

    # -- the Bearer-token registry -------------------------------------------------------------

    @staticmethod
    def _needs(scope) -> tuple[str, set[tuple[str, str]]] | None:
        """(scope string to challenge with, {(repo, action)} this request needs)."""
        match = _REPO.match(scope["path"])
        if not match:
            return None
        repo = match.group(1)
        action = "pull" if scope["method"] in ("GET", "HEAD") else "push"
        needs = {(repo, "pull")} | ({(repo, "push")} if action == "push" else set())
        text = f"repository:{repo}:pull" + (",push" if action == "push" else "")
        source = httpx.QueryParams(scope["query_string"].decode()).get("from")
        if source:
            needs.add((source, "pull"))
            text += f" repository:{source}:pull"
        return text, needs

    def _authorized(self, scope, headers) -> bool:
        value = headers.get("authorization", "")
        if not value.startswith("Bearer "):
            return False
        granted = self._tokens.get(value[7:])
        if granted is None:
            return False
        needs = self._needs(scope)
        return needs is None or needs[1] <= granted

    async def _challenge(self, scope, send) -> None:
        needs = self._needs(scope)
        challenge = f'Bearer realm="http://{self.host}/token",service="test-registry"'
        if needs:
            challenge += f',scope="{needs[0]}"'
        self.hits.append(Hit(scope["method"], scope["path"], None, 401))
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"www-authenticate", challenge.encode()), (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _token(self, scope, headers, send) -> None:
        params = httpx.QueryParams(scope["query_string"].decode())
        self.token_requests.append({"service": params.get("service"), "scopes": params.get_list("scope"),
                                    "basic": headers.get("authorization", "").startswith("Basic ")})
        status, body = 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
        auth = headers.get("authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(user) == password:
                granted = set()
                for item in params.get_list("scope"):
                    _, repo, actions = item.split(":")
                    granted |= {(repo, a) for a in actions.split(",")}
                token = secrets.token_hex(16)
                self._tokens[token] = granted
                status, body = 200, f'{{"token":"{token}","expires_in":300}}'.encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
