"""Blob bodies straight off the socket: GETs on pooled `http.client` connections, each read into
one reused buffer.

httpx spends about 0.5 ms of CPU per request and passes every 64 KiB of a body through h11 and
several copies. For the ~1,000 blobs of a pipeline that was most of a pull's CPU: the client's
share of the bench pull fell from 1.9-2.3 CPU-s to 1.2-1.6 (bench/README.md). Only the plain case
comes here: a GET to the registry's own origin, no proxy configured for it, answered 200 or 206.
Anything else (a 401 to answer, a redirect to a CDN, an error) returns None, and the caller sends
the request again through httpx, where auth, redirects and error bodies are handled.
Must not import rich, fastapi, torch or mlx.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
import urllib.request
from typing import Iterator

import httpx

from ollimg.hosts import is_loopback

BUFFER = 1 << 20
SMALL_ERROR_BODY = 64 << 10
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def proxied(url: str) -> bool:
    """Whether the environment routes `url` through a proxy, as the registry's httpx client does:
    HTTP(S)_PROXY, ALL_PROXY and NO_PROXY, never for loopback hosts."""
    parts = urllib.parse.urlsplit(url)
    if is_loopback(parts.netloc):
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass_environment(parts.hostname or "", proxies)


class _Connection:
    """One keep-alive connection and the buffer its bodies are read into."""

    def __init__(self, http_connection: http.client.HTTPConnection):
        self.http = http_connection
        self.buffer = memoryview(bytearray(BUFFER))


class Body:
    """A successful blob GET: status (200 or 206), headers, and the body as memoryview chunks.

    Each chunk is a view of the connection's buffer, valid until the next one is asked for.
    `close()` gives the connection back when the body was read to its end, else drops it.
    """

    def __init__(self, pool: "DirectPool", conn: _Connection, response: http.client.HTTPResponse):
        self.pool, self.conn, self.response = pool, conn, response
        self.status_code = response.status
        self.headers = httpx.Headers(response.getheaders())

    def chunks(self) -> Iterator[memoryview]:
        buffer = self.conn.buffer
        while True:
            try:
                n = self.response.readinto(buffer)
            except (OSError, http.client.HTTPException) as e:
                raise httpx.ReadError(f"{type(e).__name__}: {e}") from None
            if not n:
                if self.response.length:  # the connection ended before Content-Length bytes came
                    raise httpx.RemoteProtocolError(f"the body ended {self.response.length} bytes early")
                return
            yield buffer[:n]

    def close(self) -> None:
        if self.conn is None:
            return
        done = self.response.isclosed() and not self.response.will_close
        self.pool.release(self.conn, reuse=done)
        self.conn = None

    def __enter__(self) -> "Body":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DirectPool:
    """Idle keep-alive connections to one origin, shared by the transfer threads."""

    def __init__(self, base: str, user_agent: str, timeout: float):
        parts = urllib.parse.urlsplit(base)
        self.scheme, self.host, self.port = parts.scheme, parts.hostname or "", parts.port
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.user_agent, self.timeout = user_agent, timeout
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._ssl = httpx.create_ssl_context() if self.scheme == "https" else None

    def get(self, url: str, headers: dict[str, str]) -> Body | None:
        """The GET's body when the answer is 200 or 206; None when httpx must take this request."""
        url = str(url)
        if not url.startswith(self.origin + "/"):
            return None
        target = url[len(self.origin):]
        headers = {"User-Agent": self.user_agent, **headers}
        conn, reused = self._acquire()
        try:
            try:
                response = self._request(conn, target, headers)
            except _STALE:
                if not reused:
                    raise
                self.release(conn, reuse=False)  # the server closed an idle connection: once more, on a new one
                conn, reused = self._connect(), False
                response = self._request(conn, target, headers)
        except (OSError, http.client.HTTPException) as e:
            self.release(conn, reuse=False)
            raise httpx.ConnectError(f"{type(e).__name__}: {e}") from e
        if response.status in (200, 206):
            return Body(self, conn, response)
        self._discard(conn, response)
        return None

    def _request(self, conn: _Connection, target: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        conn.http.request("GET", target, headers=headers)
        return conn.http.getresponse()

    def _discard(self, conn: _Connection, response: http.client.HTTPResponse) -> None:
        """Drops a non-2xx answer; a short body is read so the connection can be used again."""
        length = response.getheader("content-length", "")
        try:
            if length.isdigit() and int(length) <= SMALL_ERROR_BODY:
                response.read()
                self.release(conn, reuse=not response.will_close)
                return
        except (OSError, http.client.HTTPException):
            pass
        self.release(conn, reuse=False)

    def _acquire(self) -> tuple[_Connection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _connect(self) -> _Connection:
        if self.scheme == "https":
            return _Connection(http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._ssl))
        return _Connection(http.client.HTTPConnection(self.host, self.port, timeout=self.timeout))

    def release(self, conn: _Connection, reuse: bool) -> None:
        if reuse:
            with self._lock:
                self._idle.append(conn)
        else:
            conn.http.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.http.close()
