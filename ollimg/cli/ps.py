"""`ollimg ps`: the models the server has loaded: NAME, ID, SIZE, PROCESSOR, UNTIL."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import typer
from rich.console import Console
from rich.table import Table

from ollimg.cli.format import human_bytes
from ollimg.client import Client


def register(app: typer.Typer) -> None:
    app.command("ps")(ps_command)


def ps_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the models loaded in the server."""
    with Client() as client:
        running = client.ps()
    if as_json:
        typer.echo(json.dumps([m.model_dump() for m in running]))
        return
    table = Table("NAME", "ID", "SIZE", "PROCESSOR", "UNTIL", box=None, show_edge=False, pad_edge=False, header_style="bold")
    for m in running:
        table.add_row(m.name, m.digest.split(":")[-1][:12], human_bytes(m.size), m.processor, until(m.expires_at, m.busy))
    Console(soft_wrap=True, width=200).print(table)


def until(expires_at: str | None, busy: bool = False, now: datetime | None = None) -> str:
    if busy:
        return "Generating"
    if expires_at is None:
        return "Forever"
    seconds = int((datetime.fromisoformat(expires_at) - (now or datetime.now(timezone.utc))).total_seconds())
    if seconds < 1:
        return "Stopping..."
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''} from now"
    return "Stopping..."
