"""`ollimg serve`: the HTTP server on OLLIMG_HOST (uvicorn), configured by the OLLIMG_* settings."""

from __future__ import annotations

import errno
import logging
import socket
import sys

import typer

from ollimg import config
from ollimg.errors import OllimgError


def settings_help() -> str:
    rows = [f"  {s.name} (default: {s.default or 'unset'})\n      {s.help}" for s in config.SETTINGS]
    return "\b\nEnvironment variables:\n" + "\n".join(rows)


def register(app: typer.Typer) -> None:
    app.command("serve", epilog=settings_help())(serve_command)


def serve_command() -> None:
    """Start the server: a native API under /api and an OpenAI-compatible one under /v1."""
    import uvicorn

    from ollimg.server.app import create_app

    host, port = config.host()
    # read every setting now, so a bad value is one error line before anything listens
    config.keep_alive(), config.max_queue(), config.max_loaded_models(), config.backend(), config.load_timeout()
    config.gallery_max()
    config.max_pixels(), config.max_images(), config.max_steps(), config.max_body(), config.max_generation_time()
    config.max_upload()
    if not config.debug():
        logging.getLogger("ollimg").setLevel(logging.INFO)  # loads, unloads, cancels and crashes go to the log
    sock = _bind(host, port)  # before saying "listening": a busy port is one error line
    sys.stderr.write(f"ollimg serve: listening on http://{host}:{port} (store: {config.models_dir()})\n")
    sys.stderr.flush()
    server = uvicorn.Server(uvicorn.Config(
        create_app(), log_level="debug" if config.debug() else "warning",
        timeout_graceful_shutdown=5, access_log=config.debug(),
    ))
    server.run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        reason = "the port is in use (is another ollimg serve running?)" if e.errno == errno.EADDRINUSE else e.strerror
        raise OllimgError(f"cannot listen on {host}:{port}: {reason}; set OLLIMG_HOST to another address") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
