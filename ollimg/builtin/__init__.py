"""Models shipped inside the package (package data), imported into the store on first use.

`shapes` is the project's own small Z-Image-architecture model, trained from scratch on a
procedural world of colored shapes (training/shapes/). It is a plain diffusers-layout
directory, imported with the same `create` as any downloaded model: the runtime has no special
case for it. Imports the store and create, never HTTP, torch or mlx at import time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ollimg import config
from ollimg.errors import ModelNotFound
from ollimg.manifest import Model, Name, Store
from ollimg.manifest.name import DEFAULT_NAMESPACE, DEFAULT_TAG

log = logging.getLogger(__name__)
_HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = "shapes"


def builtin_models() -> dict[str, Path]:
    """Default store name -> the packaged diffusers-layout directory."""
    return {"shapes": _HERE / "shapes"}


def description(name: str) -> str:
    """The description in a built-in model's ollimg.json ("" when it has none)."""
    try:
        return str(json.loads((builtin_models()[name] / "ollimg.json").read_text()).get("description") or "")
    except (OSError, ValueError, KeyError):
        return ""


def source(name: Name) -> Path | None:
    """The packaged directory that `name` stands for (`shapes` is library/shapes:latest), if any."""
    if (name.host, name.namespace, name.tag, name.digest) != (config.registry_host(), DEFAULT_NAMESPACE, DEFAULT_TAG, None):
        return None
    return builtin_models().get(name.model)


def get_or_import(store: Store, name: Name) -> Model:
    """The stored model; a builtin one missing from the store is imported first."""
    try:
        return store.get(name)
    except ModelNotFound:
        path = source(name)
        if path is None:
            raise
    from ollimg.create import create  # create pulls in quantize (torch); only needed here

    log.info("importing the built-in model %s from %s", name.display(), path)
    return create(store, name, path)
