"""Finding the server: a Client when one answers at OLLIMG_HOST, starting one in the background for `run`.

Commands that also work without a server (list, show, rm, cp, create, pull, push) ask
`running_client()` and fall back to the library functions when it gives None.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ollimg import config
from ollimg.client import Client
from ollimg.errors import ServerUnreachable
from ollimg.hosts import is_loopback

START_TIMEOUT = 60.0


def running_client() -> Client | None:
    """A Client if a server answers at OLLIMG_HOST, else None."""
    client = Client()
    if client.is_running():
        return client
    client.close()
    return None


def ensure_server(say=lambda text: None) -> Client:
    """A Client of a running server; starts `ollimg serve` in the background when OLLIMG_HOST is local."""
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
