"""Where a model's files and tensors come from: a store model or a diffusers directory.

Both give the same view: `json(path)` for config files, `file(path)` for tokenizer files,
`tensors(component)` -> {upstream name without the component prefix: TensorRef} and `defaults()`.
A directory is read by `ollimg.diffusers_dir.read_source`, the one reader of diffusers directories (the
same rules for `create` and for running a directory: HF cache layouts, variants, shard checks).
`select()` checks refs against a key map (names, shapes, dtypes, fp8 scales) so that a model that
does not match fails with one clear InvalidModel before any weight is read. Knows no model
family; imports no torch or mlx.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ollimg.blobs import FP8_DTYPE, FP8_SCALE_SUFFIX, TensorRef
from ollimg.diffusers_dir import read_source
from ollimg.errors import InvalidModel

FLOATS = {"F32", "F16", "BF16"}
Shapes = dict[str, tuple[int, ...]]


@dataclass
class ModelSource:
    """A loadable model. `name` is for messages and image metadata; `digest` is None for a directory."""

    name: str
    digest: str | None
    _files: dict[str, Path]
    _tensors: dict[str, TensorRef] | None = None
    _root: Path | None = None
    _model: Any = None

    @classmethod
    def from_store(cls, model) -> "ModelSource":
        """A store `Model` (ollimg.manifest.store.Model)."""
        return cls(model.name.display(), model.digest, model.files(), _model=model)

    @classmethod
    def from_dir(cls, root: Path) -> "ModelSource":
        src = read_source(Path(root))
        return cls(str(src.root), None, dict(src.files), _tensors=dict(src.tensors), _root=src.root)

    def has(self, path: str) -> bool:
        return path in self._files

    def file(self, path: str) -> Path:
        try:
            return self._files[path]
        except KeyError:
            raise InvalidModel(f"model {self.name}: {path} is missing") from None

    def json(self, path: str) -> dict:
        try:
            return json.loads(self.file(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidModel(f"model {self.name}: {path} is not valid JSON ({e})") from None

    def tensors(self, component: str) -> dict[str, TensorRef]:
        """{name inside the component: ref} for `component` ("transformer", "text_encoder", "vae")."""
        prefix = component + "/"
        found = self._model.tensors(prefix) if self._model is not None else self._tensors
        return {title[len(prefix):]: ref for title, ref in found.items() if title.startswith(prefix)}

    def extra(self) -> dict:
        """What the model's `ollimg.json` says ("defaults", "license", ...): from the store config,
        where `create` copied it, or from the directory's file."""
        if self._model is not None:
            return self._model.config
        return self.json("ollimg.json") if self.has("ollimg.json") else {}

    def defaults(self) -> dict:
        """The model's recommended settings (`ollimg.json`'s "defaults")."""
        return self.extra().get("defaults") or {}


def select(refs: dict[str, TensorRef], shapes: Shapes, ignored: re.Pattern, fp8: re.Pattern,
           where: str, strip: str = "") -> dict[str, TensorRef]:
    """The refs named by `shapes` (and fp8 scales), checked; anything missing or unexpected is InvalidModel.

    Names lose the `strip` prefix; `ignored` matches names without it, `fp8` (the family's set of
    weights that may be float8) names as stored, with it."""
    if strip:
        refs = {(k[len(strip):] if k.startswith(strip) else k): v for k, v in refs.items()}
    chosen: dict[str, TensorRef] = {}
    for name, shape in shapes.items():
        ref = refs.get(name)
        if ref is None:
            raise InvalidModel(f"{where}: weight {strip}{name} is missing")
        if tuple(ref.shape) != tuple(shape):
            raise InvalidModel(f"{where}: weight {strip}{name} has shape {list(ref.shape)}, expected {list(shape)}")
        if ref.dtype == FP8_DTYPE and fp8.fullmatch(strip + name):
            scale = refs.get(name + FP8_SCALE_SUFFIX)
            if scale is None or scale.dtype != "F32" or tuple(scale.shape) != (shape[0],):
                raise InvalidModel(f"{where}: float8 weight {strip}{name} needs a float32 "
                                   f"{name + FP8_SCALE_SUFFIX} of shape [{shape[0]}]")
            chosen[name + FP8_SCALE_SUFFIX] = scale
        elif ref.dtype not in FLOATS:
            raise InvalidModel(f"{where}: weight {strip}{name} has dtype {ref.dtype}, which is not supported there")
        chosen[name] = ref
    unexpected = sorted(k for k in refs if k not in chosen and not ignored.match(k))
    if unexpected:
        more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
        raise InvalidModel(f"{where}: unexpected weight {', '.join(strip + k for k in unexpected[:3])}{more}")
    return chosen
