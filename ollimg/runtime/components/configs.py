"""Reading a component's config.json into a frozen dataclass: a missing required key is InvalidModel.

Imports no torch or mlx.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ollimg.errors import InvalidModel


def from_json(cls, raw: dict[str, Any], where: str, optional: tuple[str, ...] = ()):
    """`cls(**raw)` for the fields of dataclass `cls`; lists become tuples, unknown keys are ignored."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            value = raw[f.name]
            values[f.name] = tuple(value) if isinstance(value, list) else value
        elif f.name not in optional:
            raise InvalidModel(f"{where}: required key {f.name!r} is missing")
    return cls(**values)
