"""Progress as data. It travels as a callback, then as NDJSON; only the CLI draws it.

Imports nothing from the rest of ollimg.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable


@dataclass(frozen=True)
class Progress:
    """A transfer or import: `status` says what is happening; bytes `completed` of `total`."""

    status: str
    digest: str | None = None
    completed: int | None = None
    total: int | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Step:
    """A finished denoising step: `step` of `total` (1-based), seconds since generation started."""

    step: int
    total: int
    elapsed: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


OnProgress = Callable[[Progress], None]
OnStep = Callable[[Step], None]
