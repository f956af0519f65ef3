"""The one table of model families: model_index.json's `_class_name` -> the family's package
under `ollimg/runtime/models/`. A family package has `load(source, backend) -> Pipeline` and a
`weights` module (its key maps and its FP8 set, which `ollimg create --quantize fp8` reads).

Imports no torch or mlx, and no family until one is asked for.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ollimg.errors import InvalidModel

FAMILIES = {
    "ZImagePipeline": "zimage",
    "Flux2KleinPipeline": "flux2",
}


def family(class_name: str | None, where: str) -> ModuleType:
    """The family package for a pipeline class name; InvalidModel when ollimg runs no such family."""
    package = FAMILIES.get(class_name or "")
    if package is None:
        raise InvalidModel(f"{where}: pipeline {class_name!r} is not supported (ollimg runs "
                           f"{', '.join(FAMILIES)} models)")
    return importlib.import_module(f"ollimg.runtime.models.{package}")


def weights(class_name: str | None, where: str) -> ModuleType:
    """The family's `weights` module (key maps, FP8 set): data only, no torch or mlx."""
    family(class_name, where)
    return importlib.import_module(f"ollimg.runtime.models.{FAMILIES[class_name]}.weights")
