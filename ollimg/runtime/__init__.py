"""The runtime: our own Z-Image pipeline on torch (CUDA/CPU) or mlx.

    from ollimg.runtime import load
    pipe = load("z-image")                      # a store name, or a diffusers directory path
    result = pipe.generate("a cat", width=512, height=512, seed=1)
    result.images[0].save("cat.png")

This module imports no torch or mlx at import time (the server imports `ollimg.runtime.request`
and `ollimg.runtime.process`); `load` imports the chosen backend.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ollimg.runtime.pipeline import Pipeline, Result  # noqa: F401


def open_source(name_or_path: str | Path, models_dir: Path | None = None):
    """A ModelSource for a diffusers directory path or a model name in the store."""
    from ollimg.manifest.name import Name
    from ollimg.manifest.store import Store
    from ollimg.runtime.source import ModelSource

    path = Path(name_or_path).expanduser()
    if isinstance(name_or_path, Path) or (path.is_dir() and (path / "model_index.json").is_file()):
        return ModelSource.from_dir(path)
    return ModelSource.from_store(Store(models_dir).get(Name.parse(str(name_or_path))))


def read_config(source):
    """ZImageConfig of a source; defaults from the store config blob or the directory's ollimg.json."""
    from ollimg.errors import InvalidModel
    from ollimg.runtime.models.zimage.config import (Defaults, SchedulerConfig, TextEncoderConfig,
                                                      TransformerConfig, VaeConfig, ZImageConfig)

    index = source.json("model_index.json")
    if index.get("_class_name") != "ZImagePipeline":
        raise InvalidModel(f"model {source.name}: pipeline {index.get('_class_name')!r} is not supported "
                           "(ollimg runs ZImagePipeline models)")
    if source._model is not None:
        defaults = source._model.config.get("defaults")
    else:
        defaults = source.json("ollimg.json").get("defaults") if source.has("ollimg.json") else None
    return ZImageConfig(
        transformer=TransformerConfig.from_json(source.json("transformer/config.json")),
        text_encoder=TextEncoderConfig.from_json(source.json("text_encoder/config.json")),
        vae=VaeConfig.from_json(source.json("vae/config.json")),
        scheduler=SchedulerConfig.from_json(source.json("scheduler/scheduler_config.json")),
        defaults=Defaults.from_json(defaults),
    )


def load(name_or_path: str | Path, *, backend: str | None = None, device: str | None = None,
         dtype: str | None = None, models_dir: Path | None = None) -> "Pipeline":
    """Load a model (store name or diffusers directory) onto a backend; returns a Pipeline.

    backend: "torch" or "mlx" (None: OLLIMG_BACKEND, else MLX on Apple Silicon, else torch);
    device: "cpu", "cuda", "cuda:N" (None: OLLIMG_DEVICE, else CUDA when torch sees a GPU);
    dtype: "float32", "bfloat16" or "float16" (None: bfloat16 on CUDA, float32 on CPU).
    """
    from ollimg.runtime import backend as backends
    from ollimg.runtime.pipeline import Pipeline
    from ollimg.runtime.tokenizer import load_tokenizer

    start = time.perf_counter()
    source = open_source(name_or_path, models_dir)
    config = read_config(source)
    tokenizer = load_tokenizer(source)
    chosen = backends.create(backends.choose(backend), device=device, dtype=dtype)
    components = chosen.build(config, source)
    return Pipeline(source.name, source.digest, config, tokenizer, chosen, components,
                    load_seconds=time.perf_counter() - start)
