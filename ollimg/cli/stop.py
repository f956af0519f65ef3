"""`ollimg stop MODEL`: unload a model from the server now; its runtime process exits."""

from __future__ import annotations

import typer

from ollimg.client import Client
from ollimg.errors import ModelNotFound
from ollimg.manifest import Name


def register(app: typer.Typer) -> None:
    app.command("stop")(stop_command)


def stop_command(model: str = typer.Argument(..., help="Model name.")) -> None:
    """Unload a running model."""
    name = Name.parse(model).display()
    with Client() as client:
        if name not in {m.name for m in client.ps()}:
            raise ModelNotFound(f'model "{name}" is not loaded; see: ollimg ps')
        client.unload(name)
