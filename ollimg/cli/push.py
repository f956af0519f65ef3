"""`ollimg push NAME`: a stored model to its registry."""

from __future__ import annotations

from typing import Optional

import typer

from ollimg.cli.transfer import transfer


def register(app: typer.Typer) -> None:
    @app.command("push")
    def push_command(
        name: str = typer.Argument(..., help="Model name with the registry host: host[:port]/namespace/model[:tag]"),
        insecure: bool = typer.Option(False, "--insecure", help="Use plain HTTP (automatic for loopback hosts)."),
        concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, max=64,
                                                  help="Blobs transferred at once (default: OLLIMG_REGISTRY_CONCURRENCY, 8)."),
        json_output: bool = typer.Option(False, "--json", help="Progress as NDJSON lines on stdout."),
    ) -> None:
        """Push a model to a registry; blobs the registry already has are skipped."""
        transfer("push", name, insecure, concurrency, json_output)
