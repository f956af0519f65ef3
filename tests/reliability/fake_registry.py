"""A small registry that lies, for the malicious-registry tests: it serves whatever manifests and blobs
a test gives it (declared sizes need not match, titles may be paths out of the store), can ask for
Basic credentials, can redirect blob GETs elsewhere, and records the Authorization headers it saw.
A plain http.server on a free loopback port, started and stopped by the test.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.ollimg.model.config.v1+json"
TENSOR_TYPE = "application/vnd.ollimg.tensor.v1"
FILE_TYPE = "application/vnd.ollimg.file.v1"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    def __init__(self):
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        self.redirect_blobs_to: str | None = None  # base URL blob GETs are redirected to
        self.challenge = False  # answer every request without credentials with 401 Basic
        self.authorizations: list[str | None] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.host = f"127.0.0.1:{self.server.server_address[1]}"

    def add_blob(self, data: bytes) -> str:
        d = digest(data)
        self.blobs[d] = data
        return d

    def add_model(self, repo: str, tag: str, layers: list[dict], config: bytes = b"{}",
                  media_type: str = OCI_MANIFEST) -> bytes:
        """A manifest naming `layers` (descriptors as given: sizes may lie) and `config`."""
        manifest = {"schemaVersion": 2, "mediaType": media_type,
                    "config": {"mediaType": CONFIG_TYPE, "digest": self.add_blob(config), "size": len(config)},
                    "layers": layers}
        raw = json.dumps(manifest).encode()
        self.manifests[(repo, tag)] = (raw, media_type)
        return raw

    def layer(self, data: bytes, title: str, media_type: str = FILE_TYPE, size: int | None = None, **annotations) -> dict:
        return {"mediaType": media_type, "digest": self.add_blob(data), "size": len(data) if size is None else size,
                "annotations": {"org.opencontainers.image.title": title, **annotations}}

    def start(self) -> "FakeRegistry":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET(head=True)

            def do_GET(self, head: bool = False) -> None:
                auth = self.headers.get("Authorization")
                registry.authorizations.append(auth)
                if registry.challenge and not auth:
                    return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', "application/json",
                                      {"WWW-Authenticate": 'Basic realm="fake"'})
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts == ["v2"]:
                    return self._send(200, b"{}", "application/json")
                if len(parts) >= 4 and parts[-2] == "manifests":
                    found = registry.manifests.get(("/".join(parts[1:-2]), parts[-1]))
                    if found:
                        return self._send(200, found[0], found[1], head=head)
                if len(parts) >= 4 and parts[-2] == "blobs" and parts[-1] in registry.blobs:
                    if registry.redirect_blobs_to:
                        return self._send(307, b"", "text/plain", {"Location": registry.redirect_blobs_to + self.path})
                    return self._send(200, registry.blobs[parts[-1]], "application/octet-stream", head=head)
                self._send(404, b'{"errors":[{"code":"NOT_FOUND"}]}', "application/json")

            def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None, head: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        return Handler
