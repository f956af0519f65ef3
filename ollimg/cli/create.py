"""`ollimg create NAME -f DIR [--quantize fp8] [--dtype bf16]`: import a diffusers model.

Calls `ollimg.create.create` (the library function the server uses too) and draws its progress
on stderr; stdout gets the result (one line, or JSON with --json).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from ollimg.cli.connect import running_client
from ollimg.cli.format import byte_bar, human_bytes
from ollimg.create import create
from ollimg.manifest import Name, Store
from ollimg.progress import Progress


def register(app: typer.Typer) -> None:
    app.command("create")(create_command)


def create_command(
    name: str = typer.Argument(..., help="Name for the model, e.g. z-image or me/z-image:fp8."),
    file: Path = typer.Option(..., "-f", "--file", help="Diffusers model dir, HF cache snapshot or models--org--name dir."),
    quantize: str = typer.Option(None, "--quantize", "-q", help="Quantize linear weights: fp8."),
    dtype: str = typer.Option(None, "--dtype", help="Convert float weights while importing: bf16."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Import a Hugging Face diffusers model into the store."""
    parsed = Name.parse(name)  # an invalid name fails before any work
    with byte_bar() as bar:
        task = bar.add_task("reading", total=None)

        def draw(p: Progress) -> None:
            if p.total is None:
                bar.update(task, description=p.status)
            else:
                bar.update(task, description=p.status, completed=p.completed or 0, total=p.total)

        client = running_client()
        if client is not None:  # the server imports into its store; the path must be absolute there
            with client:
                done = client.create(name, str(file.expanduser().resolve()), quantize=quantize, dtype=dtype, on_progress=draw)
                model = client.show(name)
            result = {
                "name": model.name, "id": model.digest.split(":")[-1][:12], "digest": model.digest, "size": model.size,
                "new_bytes": done.new_bytes or 0, "deduplicated_bytes": done.deduplicated_bytes or 0,
            }
        else:
            model = create(Store(), parsed, file, quantize=quantize, dtype=dtype, on_progress=draw)
            result = {
                "name": model.name.display(), "id": model.id, "digest": model.digest, "size": model.size,
                "new_bytes": model.new_bytes, "deduplicated_bytes": model.deduplicated_bytes,
            }
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"created {result['name']} ({result['id']}): {human_bytes(result['new_bytes'])} new, "
                   f"{human_bytes(result['deduplicated_bytes'])} deduplicated")
