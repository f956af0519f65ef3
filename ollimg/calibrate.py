"""`ollimg calibrate`: fit a stored model's TeaCache polynomial and store it with the model.

The model runs in a runtime process (`ollimg/runtime/process.py`, as the server runs it) pinned to
its digest; every step of full generations over the prompts is recorded and fitted there
(`ollimg/runtime/teacache.py`). The fit is stored as a small JSON file layer `teacache.json`: the
tag then names a new manifest with the old config and layers (every blob shared, as `cp` does)
plus that layer, replacing an earlier calibration. Pushing the model carries it. Imports no
torch, mlx or HTTP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ollimg import builtin, config
from ollimg.errors import Busy, InvalidInput
from ollimg.manifest import Model, Name, Store
from ollimg.manifest.manifest import Manifest, file_layer
from ollimg.progress import Step
from ollimg.runtime.teacache import CALIBRATION_FILE, check_threshold

# The built-in prompt set: varied subjects, compositions and styles, as the fit should see.
DEFAULT_PROMPTS = [
    "a red fox sitting in fresh snow at sunrise, photograph",
    "a bowl of ramen on a wooden table, close-up, soft light",
    "a futuristic city skyline at night with neon signs",
    "an oil painting of a sailing ship in a storm",
    "a portrait of an old fisherman, black and white photograph",
    "a watercolor of a mountain lake with pine trees",
    "a cozy reading room with a fireplace and bookshelves",
    "a minimalist logo of a blue bird on a white background",
]


@dataclass
class Calibrated:
    model: Model  # the new manifest the tag names
    calibration: dict  # the stored JSON


def check_teacache(model: Model, threshold) -> float | None:
    """A request's TeaCache threshold, checked before the model runs (the runtime checks it again)."""
    calibrated = any(layer.title == CALIBRATION_FILE for layer in model.manifest.file_layers())
    return check_threshold(threshold, calibrated, model.name.display())


def read_prompts(path: Path) -> list[str]:
    """One prompt per non-blank line."""
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read prompts from {path}: {e}") from None
    if not prompts:
        raise InvalidInput(f"{path} has no prompts (one per line)")
    return prompts


def calibrate(store: Store, name: Name, prompts: list[str] | None = None, steps: int | None = None,
              on_step: Callable[[Step], None] | None = None) -> Calibrated:
    """Record and fit in a runtime process, then store the fit as the model's `teacache.json`."""
    from ollimg.runtime.process import RuntimeProcess

    if steps is not None and not 3 <= steps <= 1000:
        raise InvalidInput(f"invalid steps {steps}: calibration needs 3 to 1000")
    model = builtin.get_or_import(store, name)
    backend, device = config.backend(), config.device()
    runtime = RuntimeProcess(f"{model.name.display()}@{model.digest}", models_dir=store.root,
                             backend=None if backend == "auto" else backend,
                             device=None if device == "auto" else device)
    try:
        runtime.start(config.load_timeout())
        fitted = runtime.calibrate(prompts or DEFAULT_PROMPTS, steps, on_step)
    finally:
        runtime.stop()
    return Calibrated(store_calibration(store, model, fitted), fitted)


def store_calibration(store: Store, model: Model, calibration: dict) -> Model:
    """The tag re-pointed at `model`'s manifest plus (or with a new) `teacache.json` layer."""
    raw = json.dumps(calibration, indent=1, sort_keys=True).encode()
    with store.lock():
        digest = store.blobs.put_bytes(raw)
        current = store.get(model.name)
        if current.digest != model.digest:
            raise Busy(f"model {model.name.display()} changed while it was calibrated; run ollimg calibrate again")
        layers = [layer for layer in model.manifest.layers if layer.title != CALIBRATION_FILE]
        layers.append(file_layer(CALIBRATION_FILE, digest, len(raw)))
        manifest = Manifest(config=model.manifest.config, layers=layers,
                            mediaType=model.manifest.media_type, schemaVersion=2)
        return store.put_manifest(model.name, manifest.dump())
