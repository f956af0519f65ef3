"""Models shipped inside the package (package data), by their default store name.

`shapes` is the project's own small Z-Image-architecture model, trained from scratch on a
procedural world of colored shapes (training/shapes/). It is a plain diffusers-layout
directory: the runtime has no special case for it.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def builtin_models() -> dict[str, Path]:
    """Default store name -> the packaged diffusers-layout directory."""
    return {"shapes": _HERE / "shapes"}
