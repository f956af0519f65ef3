"""Human-readable sizes and times (decimal units and "2 minutes ago", like ollama) and the byte progress bar."""

from __future__ import annotations

from datetime import datetime, timezone

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def ago(when: datetime, now: datetime | None = None) -> str:
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - when).total_seconds()))
    if seconds < 1:
        return "Less than a second ago"
    for size, unit in ((31536000, "year"), (2592000, "month"), (604800, "week"), (86400, "day"),
                       (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "Less than a second ago"


def byte_bar(transient: bool = False) -> Progress:
    """A rich progress bar on stderr with bytes, rate and ETA; drawn only when stderr is a terminal."""
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=False),
               TransferSpeedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console, transient=transient, disable=not console.is_terminal)
