"""`ollimg load FILE|DIR|-`: models from an OCI image layout (a .tar or .tar.zst archive, detected by
its first bytes, a layout directory, or stdin) into the store.

Through a running server (its store: the archive's bytes are sent to it; a directory is sent as
a tar made on the fly; the server streams its progress lines back), else into the local store.
Progress on stderr (or NDJSON on stdout with --json); the loaded names on stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import typer

from ollimg import archive
from ollimg.cli.connect import running_client
from ollimg.cli.format import human_bytes
from ollimg.cli.transfer import TransferDisplay
from ollimg.errors import InvalidModel
from ollimg.manifest import Store
from ollimg.progress import OnProgress, Progress


def register(app: typer.Typer) -> None:
    app.command("load")(load_command)


def load_command(
    source: str = typer.Argument(..., help="An archive (.tar, .tar.zst), an OCI image layout directory, or - for stdin."),
    json_output: bool = typer.Option(False, "--json", help="Progress and the result as NDJSON lines on stdout."),
) -> None:
    """Load models from an archive made by `ollimg save` (or an OCI image layout of ollimg models)."""
    path = None if source == "-" else Path(source)
    if path is not None and not path.exists():
        raise InvalidModel(f"{source}: no such file or directory")
    with TransferDisplay("loading", json_output) as display:
        client = running_client()
        if client is not None:
            with client:
                chunks, total = _bytes_of(path)
                result = client.load_archive(chunks, total, on_progress=_upload_view(display))
            names, new, dedup = result.models, result.new_bytes, result.deduplicated_bytes
        else:
            loaded = archive.load(Store(), path or archive.read_chunks(sys.stdin.buffer), on_progress=display)
            names = [m.name.display() for m in loaded.models]
            new, dedup = loaded.new_bytes, loaded.deduplicated_bytes
    if json_output:
        typer.echo(json.dumps({"status": "success", "models": names, "new_bytes": new, "deduplicated_bytes": dedup}))
        return
    for name in names:
        typer.echo(f"loaded '{name}'")
    typer.echo(f"{human_bytes(new)} new, {human_bytes(dedup)} already in the store")


def _upload_view(display: TransferDisplay) -> OnProgress:
    """Through a server the bar is the upload's (the server loads the bytes as they arrive); the
    server's per-blob lines reach the client only once the upload has ended, so they are shown as
    NDJSON (--json) and otherwise only its statuses (`writing manifest`)."""

    def show(progress: Progress) -> None:
        if display.mode == "json" or progress.digest is None:
            display(progress)

    return show


def _bytes_of(path: Path | None) -> tuple[Iterator[bytes], int | None]:
    """What to send the server: stdin, a file, or a layout directory as a tar (and its size)."""
    if path is None:
        return archive.read_chunks(sys.stdin.buffer), None
    if path.is_dir():
        tarred = archive.DirectoryTar(path)
        return tarred.chunks(), tarred.size
    return _file(path), path.stat().st_size


def _file(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from archive.read_chunks(f)
