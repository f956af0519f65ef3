"""`ollimg pull NAME`: a model from its registry into the local store."""

from __future__ import annotations

from typing import Optional

import typer

from ollimg.cli.transfer import transfer


def register(app: typer.Typer) -> None:
    @app.command("pull")
    def pull_command(
        name: str = typer.Argument(..., help="Model name: host:port/namespace/model:tag, or a shorter form"),
        insecure: bool = typer.Option(False, "--insecure", help="Use plain HTTP (automatic for loopback hosts)."),
        concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, max=64,
                                                  help="Blobs transferred at once (default: OLLIMG_REGISTRY_CONCURRENCY, 8)."),
        json_output: bool = typer.Option(False, "--json", help="Progress as NDJSON lines on stdout."),
    ) -> None:
        """Pull a model from a registry; an interrupted pull resumes where it stopped."""
        transfer("pull", name, insecure, concurrency, json_output)
