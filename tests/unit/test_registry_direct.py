"""The direct blob path (ollimg/registry/direct.py) against a real HTTP/1.1 server on loopback:
bodies, ranges, keep-alive reuse, the answers it hands back to httpx, stale and short connections."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ollimg.registry.client import HttpxBody, Registry
from ollimg.registry.direct import Body, DirectPool, proxied

DATA = bytes(range(256)) * 12_000  # 3 MB: several buffer-fulls


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: list[int] = []
    requests: list[tuple[str, dict]] = []

    def log_message(self, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        Handler.connections.append(self.client_address[1])

    def send_body(self, status: int, body: bytes, length: int | None = None, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        Handler.requests.append((self.path, dict(self.headers)))
        if self.path == "/v2/r/blobs/ok":
            spec = self.headers.get("Range")
            if spec:
                start, end = (int(x) for x in spec.removeprefix("bytes=").split("-"))
                self.send_body(206, DATA[start:end + 1], Content_Range=f"bytes {start}-{end}/{len(DATA)}")
            else:
                self.send_body(200, DATA)
        elif self.path == "/v2/r/blobs/auth":
            self.send_body(401, b'{"errors":[]}', WWW_Authenticate='Basic realm="x"')
        elif self.path == "/v2/r/blobs/moved":
            self.send_body(307, b"", Location="/v2/r/blobs/ok")
        elif self.path == "/v2/r/blobs/short":
            self.send_body(200, DATA[:1000], length=len(DATA))
            self.close_connection = True
        elif self.path == "/v2/r/blobs/chunked":  # no Content-Length: the body in chunks
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(DATA), 700_000):
                piece = DATA[start:start + 700_000]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/v2/r/blobs/bye":  # answers, then closes the connection without saying so
            self.send_body(200, b"bye")
            self.close_connection = True
        else:
            self.send_body(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')


@pytest.fixture()
def server():
    Handler.connections, Handler.requests = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def read(body) -> bytes:
    with body:
        return b"".join(bytes(chunk) for chunk in body.chunks())


def test_bodies_come_whole_and_ranged_on_one_kept_alive_connection(server):
    pool = DirectPool(server, "ollimg/test", timeout=5)
    assert hashlib.sha256(read(pool.get(f"{server}/v2/r/blobs/ok", {}))).digest() == hashlib.sha256(DATA).digest()
    ranged = pool.get(f"{server}/v2/r/blobs/ok", {"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.headers["content-range"] == "bytes 100-199/3072000"
    assert read(ranged) == DATA[100:200]
    assert read(pool.get(f"{server}/v2/r/blobs/ok", {})) == DATA
    assert len(Handler.connections) == 1
    assert Handler.requests[0][1]["User-Agent"] == "ollimg/test"
    pool.close()


def test_answers_other_than_200_and_206_are_handed_back(server):
    pool = DirectPool(server, "ollimg/test", timeout=5)
    for path in ("auth", "moved", "missing"):
        assert pool.get(f"{server}/v2/r/blobs/{path}", {}) is None
    assert pool.get("http://elsewhere.test/v2/r/blobs/ok", {}) is None  # another origin: never sent
    assert read(pool.get(f"{server}/v2/r/blobs/ok", {})) == DATA
    assert len(Handler.connections) == 1  # the short error bodies were read, the connection kept
    assert len(Handler.requests) == 4


def test_a_connection_the_server_closed_is_replaced_without_an_error(server):
    pool = DirectPool(server, "ollimg/test", timeout=5)
    assert read(pool.get(f"{server}/v2/r/blobs/ok", {})) == DATA
    body = pool.get(f"{server}/v2/r/blobs/bye", {})
    assert read(body) == b"bye"
    assert read(pool.get(f"{server}/v2/r/blobs/ok", {})) == DATA
    assert len(Handler.connections) == 2


def test_a_body_cut_short_is_a_transport_error(server):
    pool = DirectPool(server, "ollimg/test", timeout=5)
    body = pool.get(f"{server}/v2/r/blobs/short", {})
    with pytest.raises(httpx.RemoteProtocolError, match="early"):
        read(body)


def test_a_body_left_unread_drops_its_connection(server):
    pool = DirectPool(server, "ollimg/test", timeout=5)
    with pool.get(f"{server}/v2/r/blobs/ok", {}) as body:
        next(iter(body.chunks()))
    assert read(pool.get(f"{server}/v2/r/blobs/ok", {})) == DATA
    assert len(Handler.connections) == 2


def test_unreachable_is_a_transport_error():
    pool = DirectPool("http://127.0.0.1:9", "ollimg/test", timeout=5)
    with pytest.raises(httpx.ConnectError):
        pool.get("http://127.0.0.1:9/v2/r/blobs/ok", {})


def test_registry_get_blob_goes_direct_then_falls_back_to_httpx(server):
    host = server.removeprefix("http://")
    with Registry(host) as registry:
        direct = registry.get_blob(f"{server}/v2/r/blobs/ok", "pull")
        assert isinstance(direct, Body) and read(direct) == DATA
        moved = registry.get_blob(f"{server}/v2/r/blobs/moved", "pull")  # httpx follows the redirect
        assert isinstance(moved, HttpxBody) and read(moved) == DATA


def test_proxy_settings_turn_the_direct_path_off(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert not proxied("https://registry.example/v2/")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert proxied("https://registry.example/v2/")
    assert not proxied("http://registry.example/v2/")
    monkeypatch.setenv("NO_PROXY", "registry.example")
    assert not proxied("https://registry.example/v2/")
    monkeypatch.setenv("ALL_PROXY", "http://proxy.example:3128")
    assert proxied("http://other.example/v2/")
    assert Registry("other.example", insecure=True).direct is None


def test_a_chunked_body_comes_whole_and_keeps_the_connection(server):
    pool = DirectPool(server, "ollimg/test", timeout=5)
    assert read(pool.get(f"{server}/v2/r/blobs/chunked", {})) == DATA
    assert read(pool.get(f"{server}/v2/r/blobs/ok", {})) == DATA
    assert len(Handler.connections) == 1
