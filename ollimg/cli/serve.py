"""`ollimg serve`: the HTTP server on OLLIMG_HOST (uvicorn), configured by the OLLIMG_* settings."""

from __future__ import annotations

import logging
import sys

import typer

from ollimg import config


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
    if not config.debug():
        logging.getLogger("ollimg").setLevel(logging.INFO)  # loads, unloads, cancels and crashes go to the log
    sys.stderr.write(f"ollimg serve: listening on http://{host}:{port} (store: {config.models_dir()})\n")
    sys.stderr.flush()
    uvicorn.run(
        create_app(), host=host, port=port, log_level="debug" if config.debug() else "warning",
        timeout_graceful_shutdown=5, access_log=config.debug(),
    )
