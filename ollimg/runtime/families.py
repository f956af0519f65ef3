"""The one table of model families: model_index.json's `_class_name` -> the family's package
under `ollimg/runtime/models/`. A family package has `load(source, backend) -> Pipeline` and a
`weights` module (its key maps and its FP8 set, which `ollimg create --quantize fp8` reads).

`CAPABILITIES` says what each family's pipelines take besides a prompt, so that the server can
refuse an edit a model cannot do before it loads the model (ollimg/server/capabilities.py); a
family's `generate` enforces the same rules.

Imports no torch or mlx, and no family until one is asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from ollimg.errors import InvalidModel

FAMILIES = {
    "ZImagePipeline": "zimage",
    "Flux2KleinPipeline": "flux2",
}



@dataclass(frozen=True)
class Capabilities:
    """What a family's pipelines take besides a prompt."""

    images: int  # input images per request: the one to edit and references (0: text to image only)
    mask: bool  # inpainting: a mask over the (first) image
    strength: bool  # redrawing the (first) image by a strength
    encoder: str = "vae/encoder.conv_in.weight"  # the stored tensor without which a model cannot take images


CAPABILITIES = {
    "ZImagePipeline": Capabilities(images=1, mask=True, strength=True),
    "Flux2KleinPipeline": Capabilities(images=8, mask=True, strength=True),  # 8: flux2.pipeline.MAX_REFERENCES
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


def prepare(backend: str) -> None:
    """Import every family with its build for `backend` ("torch" or "mlx"): the modules a load needs."""
    for package in FAMILIES.values():
        importlib.import_module(f"ollimg.runtime.models.{package}.{backend}.build")
