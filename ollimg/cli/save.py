"""`ollimg save NAME... -o FILE`: models as one OCI image layout archive (.tar.zst, .tar, or - for stdout).

Through a running server (its store: it sends a plain tar with a known length, compressed here),
else from the local store. A file is written beside its final name and renamed when complete, so
an interrupted save never leaves a file that looks whole. Progress on stderr (or NDJSON on stdout
with --json); the result on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

import typer

from ollimg import archive
from ollimg.cli.connect import running_client
from ollimg.cli.format import human_bytes
from ollimg.cli.transfer import TransferDisplay
from ollimg.errors import InvalidInput
from ollimg.manifest import Name, Store


def register(app: typer.Typer) -> None:
    app.command("save")(save_command)


def save_command(
    names: list[str] = typer.Argument(..., help="Models to save."),
    output: str = typer.Option(..., "-o", "--output", help="FILE.tar.zst, FILE.tar, or - for stdout."),
    format: Optional[str] = typer.Option(None, "--format", help="tar.zst or tar (default: tar for a .tar name, else tar.zst)."),
    level: int = typer.Option(archive.DEFAULT_LEVEL, "--level", "-l", min=1, max=22, help="zstd level (above 19 needs much more memory)."),
    threads: int = typer.Option(0, "--threads", "-T", min=0, help="zstd worker threads; 0: one per CPU."),
    json_output: bool = typer.Option(False, "--json", help="Progress and the result as NDJSON lines on stdout."),
) -> None:
    """Save models to one archive (an OCI image layout) that `ollimg load` and skopeo read."""
    parsed = [Name.parse(n) for n in names]  # an invalid name fails before any work
    kind = format or ("tar" if output.endswith(".tar") else "tar.zst")
    if kind not in ("tar", "tar.zst"):
        raise InvalidInput(f"unknown format {kind!r}: use tar.zst or tar")
    if output == "-" and json_output:
        raise InvalidInput("--json writes to stdout, which -o - already takes for the archive: save to a file")
    if output == "-" and sys.stdout.isatty():
        raise InvalidInput("refusing to write an archive to a terminal: redirect stdout or use -o FILE")
    level_or_none = level if kind == "tar.zst" else None
    with TransferDisplay("saving", json_output) as display, _open(output) as out:
        client = running_client()
        if client is not None:  # the server's store; the server sends a plain tar (exact progress), compressed here
            with client:
                chunks: Iterator[bytes] = client.save([str(n) for n in parsed], format="tar", on_progress=display)
                if level_or_none is not None:
                    chunks = archive.compress(chunks, level_or_none, threads)
                written = 0
                for chunk in chunks:
                    out.write(chunk)
                    written += len(chunk)
            saved = [n.display() for n in parsed]
        else:
            result = archive.save(Store(), parsed, out, level=level_or_none, threads=threads, on_progress=display)
            saved, written = result.models, result.written
    if json_output:
        typer.echo(json.dumps({"status": "success", "models": saved, "file": output, "format": kind, "bytes": written}))
    elif output != "-":
        typer.echo(f"saved {', '.join(repr(n) for n in saved)} to {output} ({human_bytes(written)})")


class _open:
    """stdout, or FILE written as a temp file beside it and renamed into place when complete."""

    def __init__(self, output: str):
        self.output = output
        self.tmp: Path | None = None
        self.f: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        if self.output == "-":
            return sys.stdout.buffer
        path = Path(self.output)
        self.tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            self.f = open(self.tmp, "wb")
        except OSError as e:
            raise InvalidInput(f"cannot write {self.output}: {e.strerror}") from None
        return self.f

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.f is None:
            if self.output == "-":
                sys.stdout.buffer.flush()
            return
        self.f.close()
        if exc_type is None:
            os.replace(self.tmp, self.output)
        else:
            self.tmp.unlink(missing_ok=True)
