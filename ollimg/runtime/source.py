"""Where a model's files and tensors come from: a store model or a diffusers directory.

Both give the same view: `json(path)` for config files, `file(path)` for tokenizer files and
`tensors(component)` -> {upstream name without the component prefix: TensorRef}. `select()` checks
those refs against a key map (names, shapes, dtypes, fp8 scales) so that a model that does not
match fails with one clear InvalidModel before any weight is read. Imports no torch or mlx.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ollimg.blobs import TensorRef, read_header
from ollimg.errors import InvalidModel
from ollimg.runtime.models.zimage.weights import FP8_SCALE_SUFFIX, Shapes

FLOATS = {"F32", "F16", "BF16"}


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
        root = Path(root)
        if not (root / "model_index.json").is_file():
            raise InvalidModel(f"{root}: not a diffusers model directory (no model_index.json)")
        files = {p.relative_to(root).as_posix(): p for p in root.rglob("*")
                 if p.is_file() and p.suffix != ".safetensors" and ".cache" not in p.relative_to(root).parts}
        return cls(str(root), None, files, _root=root)

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
        if self._model is not None:
            prefix = component + "/"
            return {title[len(prefix):]: ref for title, ref in self._model.tensors(prefix).items()}
        return _dir_tensors(self._root / component, self.name)


def _dir_tensors(folder: Path, name: str) -> dict[str, TensorRef]:
    """Tensors of one component folder: shards named by an index file, else the safetensors files there."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InvalidModel(f"model {name}: {indexes[0].name} is not a valid index") from None
        shards = sorted(set(weight_map.values()))
    else:
        shards = [p.name for p in sorted(folder.glob("*.safetensors"))]
    if not shards:
        raise InvalidModel(f"model {name}: no safetensors weights in {folder}")
    refs: dict[str, TensorRef] = {}
    for shard in shards:
        path = folder / shard
        if not path.is_file():
            raise InvalidModel(f"model {name}: shard {path} named by the index is missing")
        found, _ = read_header(path)
        refs.update(found)
    return refs


def select(refs: dict[str, TensorRef], shapes: Shapes, ignored: re.Pattern, fp8: re.Pattern,
           where: str, strip: str = "") -> dict[str, TensorRef]:
    """The refs named by `shapes` (and fp8 scales), checked; anything missing or unexpected is InvalidModel."""
    if strip:
        refs = {(k[len(strip):] if k.startswith(strip) else k): v for k, v in refs.items()}
    chosen: dict[str, TensorRef] = {}
    for name, shape in shapes.items():
        ref = refs.get(name)
        if ref is None:
            raise InvalidModel(f"{where}: weight {strip}{name} is missing")
        if tuple(ref.shape) != tuple(shape):
            raise InvalidModel(f"{where}: weight {strip}{name} has shape {list(ref.shape)}, expected {list(shape)}")
        if ref.dtype == "F8_E4M3" and fp8.match(name):
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
