"""Which hosts are this machine, and that loopback traffic never goes through a proxy from the
environment (a dead HTTP_PROXY must not cut the CLI off its own server, or a pull off a local registry)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ollimg.client import Client
from ollimg.cli.connect import is_local
from ollimg.hosts import is_loopback
from ollimg.registry.client import Registry

DEAD_PROXY = "http://127.0.0.1:9"


@pytest.mark.parametrize("host, expected", [
    ("localhost", True), ("LOCALHOST:5000", True), ("registry.localhost:5000", True),
    ("127.0.0.1", True), ("127.1.2.3:80", True), ("::1", True), ("[::1]", True), ("[::1]:5000", True),
    ("10.0.0.5:5000", False), ("ghcr.io", False), ("127.example.com:5000", False), ("0.0.0.0", False),
    ("[2001:db8::1]:443", False), ("", False),
])
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


def test_bind_all_addresses_are_local_for_the_cli():
    assert is_local("0.0.0.0") and is_local("::") and is_local("localhost") and not is_local("192.0.2.1")


class Ok(BaseHTTPRequestHandler):
    paths: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        Ok.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture()
def local_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def dead_proxy(monkeypatch):
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, DEAD_PROXY)


def test_the_native_client_reaches_a_loopback_server_past_a_proxy(dead_proxy, local_server):
    with Client(f"http://{local_server}") as client:
        assert client.is_running()
    with Client(f"http://localhost:{local_server.rsplit(':', 1)[1]}") as client:
        assert client.is_running()


def test_a_loopback_registry_is_reached_past_a_proxy(dead_proxy, local_server):
    with Registry(local_server) as registry:
        assert registry.send("GET", f"http://{local_server}/v2/").status_code == 200
        assert registry.direct is not None
        body = registry.get_blob(f"http://{local_server}/v2/r/blobs/x", "pull")
        assert b"".join(bytes(c) for c in body.chunks()) == b"ok"
        body.close()


def test_a_remote_registry_goes_through_the_proxy(monkeypatch, local_server):
    """The local server stands in for a forward proxy: it sees the absolute URL and answers itself."""
    Ok.paths = []
    for var in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://{local_server}")
    with Registry("registry.example:5000", insecure=True) as registry:
        assert registry.direct is None
        assert registry.get_blob("http://registry.example:5000/v2/r/blobs/x", "pull").status_code == 200
    assert Ok.paths == ["http://registry.example:5000/v2/r/blobs/x"]
