"""The runtime: our own diffusion pipelines on torch (CUDA/CPU) or mlx, one family per model kind.

    from ollimg.runtime import load
    pipe = load("shapes")                       # a store name, or a diffusers directory path
    result = pipe.generate("a cat", width=512, height=512, seed=1)
    result.images[0].save("cat.png")

`load` opens the model (`source.py`), picks its family from model_index.json's `_class_name`
(`families.py`) and lets the family build its pipeline on the chosen backend. This module imports
no torch or mlx at import time (the server imports `ollimg.runtime.request` and
`ollimg.runtime.process`); `load` imports the chosen backend.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ollimg.runtime.pipeline import Pipeline, Result  # noqa: F401

log = logging.getLogger(__name__)


def open_source(name_or_path: str | Path, models_dir: Path | None = None):
    """A ModelSource for a diffusers directory path or a model name in the store."""
    from ollimg.manifest.name import Name
    from ollimg.manifest.store import Store
    from ollimg.runtime.source import ModelSource

    path = Path(name_or_path).expanduser()
    if isinstance(name_or_path, Path) or (path.is_dir() and (path / "model_index.json").is_file()):
        return ModelSource.from_dir(path)
    return ModelSource.from_store(Store(models_dir).get(Name.parse(str(name_or_path))))


def prepare(backend: str | None = None, device: str | None = None, *, ahead: bool = True) -> None:
    """Import what `load` needs on this backend (as `load` picks it), every family's build for it
    and the tokenizer, allocating nothing on the device: a runtime process started before its
    model is known (the server's spare) then only reads weights when asked. `ahead` (no model
    asked for yet): also start what only later generations need (`Backend.prepare`: torch's
    compiler imports), which would otherwise compete with a load and its first generation."""
    from ollimg.runtime import backend as backends
    from ollimg.runtime import families, teacache, tokenizer  # noqa: F401

    chosen = backends.create(backends.choose(backend), device=device)  # its imports (MLX: after its BLAS)
    families.prepare(chosen.name)
    if ahead:
        chosen.prepare()


def load(name_or_path: str | Path, *, backend: str | None = None, device: str | None = None,
         dtype: str | None = None, models_dir: Path | None = None) -> "Pipeline":
    """Load a model (store name or diffusers directory) onto a backend; returns its family's Pipeline.

    backend: "torch" or "mlx" (None: OLLIMG_BACKEND, else MLX on Apple Silicon, else torch);
    device: "cpu", "cuda", "cuda:N" (None: OLLIMG_DEVICE, else CUDA when torch sees a GPU);
    dtype: "float32", "bfloat16" or "float16" (None: bfloat16 on CUDA, float32 on CPU).
    """
    from ollimg.runtime import backend as backends
    from ollimg.runtime import families, teacache

    start = time.perf_counter()
    source = open_source(name_or_path, models_dir)
    log.info("opened %s in %.2f s", source.name, time.perf_counter() - start)
    family = families.family(source.json("model_index.json").get("_class_name"), f"model {source.name}")
    chosen = backends.create(backends.choose(backend), device=device, dtype=dtype)
    try:
        pipeline = family.load(source, chosen)
    finally:
        chosen.loaded()  # also when a load fails: what it kept for itself is given back
    pipeline.calibration = teacache.read_calibration(source)
    pipeline.load_seconds = time.perf_counter() - start
    log.info("%s loaded in %.2f s", source.name, pipeline.load_seconds)
    return pipeline
