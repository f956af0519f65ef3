"""Finding the server: a Client when one answers at OLLIMG_HOST, starting one in the background for `run`.

Commands that also work without a server (list, show, rm, cp, create, pull, push) ask
`running_client()` and fall back to the library functions when it gives None.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ollimg import config
from ollimg.errors import ServerUnreachable
from ollimg.hosts import is_loopback

if TYPE_CHECKING:
    from ollimg.client import Client

START_TIMEOUT = 60.0


def running_client() -> "Client | None":
    """A Client if a server answers at OLLIMG_HOST, else None. When OLLIMG_HOST is this machine
    and nothing listens on its port, that is known at once, without importing the HTTP client
    (about a quarter of a second of every command that works without a server)."""
    if not may_listen():
        return None
    from ollimg.client import Client

    client = Client()
    if client.is_running():
        return client
    client.close()
    return None


def may_listen() -> bool:
    """False when OLLIMG_HOST is this machine and its port refuses connections (no server)."""
    host, port = config.host()
    if not is_local(host):
        return True
    address = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host  # where base_url() connects
    try:
        socket.create_connection((address, port), timeout=2.0).close()
    except ConnectionRefusedError:
        return False
    except OSError:
        return True  # something else: let the HTTP client find out and say so
    return True


def ensure_server(say=lambda text: None) -> "Client":
    """A Client of a running server; starts `ollimg serve` in the background when OLLIMG_HOST is local."""
    from ollimg.client import Client

    client = running_client()
    if client is not None:
        return client
    host, _ = config.host()
    if not is_local(host):
        raise ServerUnreachable(f"no ollimg server answers at {config.base_url()}; start it there with: ollimg serve")
    log = log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ollimg", "serve"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=dict(os.environ),
        )
    say(f"started ollimg serve in the background (pid {proc.pid}, log: {log})")
    client = Client()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if client.is_running():
            return client
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise ServerUnreachable("ollimg serve exited at once:\n" + "\n".join(tail))
        time.sleep(0.2)
    raise ServerUnreachable(f"ollimg serve did not answer within {START_TIMEOUT:.0f} s; see {log}")


def log_path() -> Path:
    return config.data_dir() / "logs" / "server.log"


def is_local(host: str) -> bool:
    """This machine: a loopback host, or a bind-all address a server here listens on."""
    return host in ("0.0.0.0", "::", "[::]") or is_loopback(host)
