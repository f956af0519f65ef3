"""`ollimg list | show | rm | cp | prune | verify`: the store commands.

The operations live in `ollimg.models` (the server calls them too); this module parses arguments
and prints: results on stdout, progress on stderr.
"""

from __future__ import annotations

import json
from datetime import datetime

import typer
from rich.console import Console
from rich.table import Table

from ollimg import models
from ollimg.cli.connect import running_client
from ollimg.cli.format import ago, byte_bar, human_bytes
from ollimg.errors import DigestMismatch, ModelNotFound
from ollimg.manifest import Name, Store


def register(app: typer.Typer) -> None:
    app.command("list")(list_command)
    app.command("ls", hidden=True)(list_command)
    app.command("show")(show_command)
    app.command("rm")(rm_command)
    app.command("cp")(cp_command)
    app.command("prune")(prune_command)
    app.command("verify")(verify_command)


def _table(*headers: str) -> Table:
    table = Table(*headers, box=None, show_edge=False, pad_edge=False, header_style="bold")
    return table


def _print(table: Table) -> None:
    Console(soft_wrap=True, width=200).print(table)


def list_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the models in the store."""
    client = running_client()
    if client is not None:
        with client:
            found = [(m.name, m.digest, m.size, datetime.fromisoformat(m.modified_at)) for m in client.tags()]
    else:
        found = [(m.name.display(), m.digest, m.size, m.modified) for m in Store().models()]
    found.sort(key=lambda m: m[3], reverse=True)
    if as_json:
        typer.echo(json.dumps([
            {"name": name, "id": digest.split(":")[-1][:12], "digest": digest, "size": size,
             "modified": modified.isoformat(timespec="seconds")} for name, digest, size, modified in found]))
        return
    table = _table("NAME", "ID", "SIZE", "MODIFIED")
    for name, digest, size, modified in found:
        table.add_row(name, digest.split(":")[-1][:12], human_bytes(size), ago(modified))
    _print(table)


def show_command(
    name: str = typer.Argument(..., help="Model name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a model: architecture, components, quantization, size, license."""
    client = running_client()
    if client is not None:
        with client:
            data = client.show(name).info
    else:
        store = Store()
        try:
            data = models.info(store.get(Name.parse(name)))
        except ModelNotFound:
            raise models.not_found(Name.parse(name), [m.name.display() for m in store.models()]) from None
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    lines = [
        f"  name            {data['name']}",
        f"  id              {data['id']}",
        f"  architecture    {data['architecture']}",
        f"  parameters      {_count(data['parameters'])}",
        f"  size on disk    {human_bytes(data['size_on_disk'])}",
        f"  capabilities    {', '.join(data['capabilities']) or '-'}",
        f"  license         {data['license'] or 'unknown'}",
    ]
    q = data["quantization"]
    if q:
        lines.append(f"  quantization    {q['scheme']}: {q['tensors']} tensors, relative RMS error "
                     f"{q['rel_rms_error']:.4f} (worst tensor {q['max_rel_rms_error']:.4f})")
    if data["dtype"]:
        lines.append(f"  converted to    {data['dtype']}")
    if data["defaults"]:
        lines.append("  defaults        " + ", ".join(f"{k}={v}" for k, v in data["defaults"].items()))
    typer.echo("  Model\n" + "\n".join(lines) + "\n\n  Components")
    table = _table("  COMPONENT", "CLASS", "PARAMETERS", "DTYPES", "SIZE")
    for component, c in data["components"].items():
        dtypes = ", ".join(f"{k} {_count(v)}" for k, v in c.get("dtypes", {}).items()) or "-"
        size = human_bytes(c["size"]) if "size" in c else "-"
        table.add_row("  " + component, c.get("class_name") or "-", _count(c.get("parameters")), dtypes, size)
    _print(table)


def _count(n: int | None) -> str:
    if not n:
        return "-"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def rm_command(names: list[str] = typer.Argument(..., help="Model names.")) -> None:
    """Remove models and every blob no other model uses."""
    parsed = [Name.parse(n) for n in names]
    client = running_client()
    if client is not None:  # through the server, which also unloads them
        with client:
            stored = [m.name for m in client.tags()]
            for n in parsed:  # ModelNotFound before anything is removed
                if n.display() not in stored:
                    raise models.not_found(n, stored, pull=False)
            results = [client.delete(n.display()) for n in parsed]
        deleted = [d for r in results for d in r.deleted]
        blobs, freed = sum(r.blobs for r in results), sum(r.bytes for r in results)
    else:
        result = models.remove(Store(), parsed)
        deleted, blobs, freed = result.names, result.blobs, result.bytes
    for n in deleted:
        typer.echo(f"deleted '{n}'")
    typer.echo(f"freed {human_bytes(freed)} ({blobs} blobs)")


def cp_command(source: str = typer.Argument(...), target: str = typer.Argument(...)) -> None:
    """Copy a model to a new name (blobs are shared)."""
    client = running_client()
    if client is not None:
        with client:
            client.copy(source, target)
    else:
        models.copy(Store(), Name.parse(source), Name.parse(target))
    typer.echo(f"copied '{Name.parse(source).display()}' to '{Name.parse(target).display()}'")


def prune_command() -> None:
    """Remove blobs no model uses and leftovers of interrupted writes."""
    result = models.prune(Store())
    typer.echo(f"removed {result.blobs} unused blobs and {result.temp_files} temp files, freed {human_bytes(result.bytes)}")


def verify_command(
    name: str = typer.Argument(None, help="Model name; all blobs of the store when left out."),
    fix: bool = typer.Option(False, "--fix", help="Delete corrupt blobs so that a new create or pull rewrites them."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Re-hash blobs and report any that are missing or do not match their digest."""
    parsed = Name.parse(name) if name else None
    with byte_bar(transient=True) as bar:
        task = bar.add_task("verifying", total=None)
        result = models.verify(Store(), parsed, lambda p: bar.update(task, completed=p.completed, total=p.total), fix)
    if as_json:
        typer.echo(json.dumps({"ok": result.ok, "blobs": result.blobs, "bytes": result.bytes, "bad": result.bad,
                               "affected": result.affected, "removed": result.removed}))
    else:
        for line in result.bad:
            typer.echo(line)
        typer.echo(f"checked {result.blobs} blobs ({human_bytes(result.bytes)}): "
                   + ("all good" if result.ok else f"{len(result.bad)} bad"))
    if not result.ok:
        what = f"{len(result.bad)} blobs are missing or corrupt" + (f" ({result.removed} corrupt ones deleted)" if fix else "")
        todo = "re-create or pull" if fix or result.removed else "run ollimg verify --fix, then re-create or pull"
        raise DigestMismatch(f"{what}; {todo}: {', '.join(result.affected) or 'no model uses them'}")
