"""Whether a model can take a request's input images, mask and strength, decided from the store
before the model loads, for every interface (the scheduler calls `check` first, as it does
admission).

What a family can do is the families' table (`ollimg/runtime/families.py`, `CAPABILITIES`: data,
no torch); which family a model is comes from its config's `architecture` (model_index.json's
`_class_name`, recorded at create). A model of an editing family whose VAE has no encoder cannot
take images either. The runtime's own checks stay (the Python API goes straight to it); this one
saves the load. Imports the store types, errors and the families table; no HTTP, no torch.
"""

from __future__ import annotations

from ollimg.errors import InvalidInput, OllimgError
from ollimg.manifest import Model
from ollimg.runtime.families import CAPABILITIES, Capabilities
from ollimg.runtime.request import GenerateRequest


def architecture(model: Model) -> str:
    """The model's pipeline class (model_index.json's `_class_name`), or "" when it states none."""
    try:
        value = model.config.get("architecture")
    except OllimgError:
        return ""
    return value if isinstance(value, str) else ""


def check(model: Model, request: GenerateRequest) -> None:
    """InvalidInput (400) naming the reason when the model cannot do the edit `request` asks for."""
    if not request.images:
        return
    name, arch = model.name.display(), architecture(model)
    caps = CAPABILITIES.get(arch)
    if caps is None or caps.images == 0:
        raise InvalidInput(f"model {name} cannot edit images: {arch or 'its pipeline'} models take no input images",
                           param="model")
    if len(request.images) > caps.images:
        raise InvalidInput(f"model {name} takes at most {caps.images} input image{'s' if caps.images > 1 else ''}, "
                           f"got {len(request.images)}", param="images")
    if request.mask is not None and not caps.mask:
        raise InvalidInput(f"model {name} cannot inpaint: {arch} models take no mask", param="mask")
    if request.strength is not None and not caps.strength:
        raise InvalidInput(f"model {name} cannot redraw an image by a strength: {arch} models take no strength",
                           param="strength")
    if not _has_encoder(model, caps):
        raise InvalidInput(f"model {name} cannot edit images: it has no VAE encoder", param="model")


def _has_encoder(model: Model, caps: Capabilities) -> bool:
    return any(layer.title == caps.encoder for layer in model.manifest.tensor_layers())
