"""`ollimg list`: placeholder registration module; the store commands land here."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
