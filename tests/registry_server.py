"""A real registry for tests and benchmarks: Debian's `docker-registry` (distribution 2.8) on a free
loopback port with its own storage dir, optionally with htpasswd basic auth. Started and stopped by
PID; never the packaged service or config.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx

BINARY = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryServer:
    def __init__(self, root: Path, users: dict[str, str] | None = None, env: dict[str, str] | None = None,
                 tls: bool = False):
        self.root = Path(root)
        self.users = users or {}
        self.env = env or {}  # extra environment for the registry process (e.g. GOGC, for the bench)
        self.tls = tls  # HTTPS with a self-signed certificate for 127.0.0.1 (`certificate`)
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def certificate(self) -> Path:
        return self.root / "cert.pem"

    def _make_certificate(self) -> str:
        """A self-signed certificate for 127.0.0.1 (openssl); the config lines that serve it."""
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(self.root / "key.pem"),
                        "-out", str(self.certificate)], check=True, capture_output=True)
        return f"  tls: {{certificate: {self.certificate}, key: {self.root / 'key.pem'}}}\n"

    def blob_data(self, digest: str) -> Path:
        """The registry's own file holding a blob's bytes."""
        hexd = digest.split(":", 1)[1]
        return self.root / "data" / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def start(self) -> "RegistryServer":
        self.root.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.users:
            lines = []
            for user, password in self.users.items():
                out = subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True)
                lines.append(out.stdout.strip())
            (self.root / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = f"auth: {{htpasswd: {{realm: ollimg-registry, path: {self.root / 'htpasswd'}}}}}\n"
        tls = self._make_certificate() if self.tls else ""
        for _ in range(3):
            self.port = free_port()
            (self.root / "config.yml").write_text(
                "version: 0.1\n"
                "log: {level: warn, accesslog: {disabled: true}}\n"
                f"storage: {{filesystem: {{rootdirectory: {self.root / 'data'}}}, delete: {{enabled: true}}, "
                "cache: {blobdescriptor: inmemory}}\n"
                f"http:\n  addr: '{self.host}'\n  secret: {secrets.token_hex(16)}\n" + tls + auth
            )
            log = open(self.root / "log", "ab")
            self.process = subprocess.Popen([BINARY, "serve", str(self.root / "config.yml")], stdout=log, stderr=log,
                                            env={**os.environ, **self.env})
            log.close()
            if self._wait_ready():
                return self
            self.stop()  # most likely the port was taken between free_port() and the bind: try another
        raise RuntimeError(f"docker-registry did not start; see {self.root / 'log'}")

    def _wait_ready(self, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                verify = ssl.create_default_context(cafile=self.certificate) if self.tls else True
                response = httpx.get(f"{self.url}/v2/", timeout=1.0, verify=verify)
                if response.status_code in (200, 401):
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
