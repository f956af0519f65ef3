"""What the server asks of a runtime and what it gets back (the runtime contract in the brief).

Plain dataclasses; imports nothing from the rest of ollimg.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerateRequest:
    prompt: str
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    n: int = 1
    format: str = "png"
    compression: int | None = None
    previews: int = 0
    model_name: str | None = None


@dataclass
class GenerateResult:
    images: list[bytes]
    seeds: list[int]
    width: int
    height: int
    steps: int
    guidance: float
    timings: dict[str, float] = field(default_factory=dict)
