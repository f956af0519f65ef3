"""Reading a Hugging Face diffusers-layout model directory: the one reader, for `create` and for
running a directory with the runtime.

Accepts a diffusers directory, a Hugging Face cache snapshot (`.../snapshots/<rev>`, files are
symlinks into `blobs/`) or a cache repo directory (`models--org--name`: refs/main picks the
snapshot). `model_index.json` says which component directories belong to the model. Every
safetensors shard's tensors (variants such as `model.fp16.safetensors` skipped when plain weights
exist; every shard an index or a `-0000k-of-0000n` series names checked), every other file of a
component (configs, tokenizer files) and the top-level model_index.json, ollimg.json, README.md
and LICENSE are listed. Shard index files are not: they name shards, not tensors. Everything is
read and checked here, before anything is written. Knows nothing of the store, HTTP, torch or mlx.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ollimg.blobs import TensorRef, read_header
from ollimg.errors import InvalidInput, InvalidModel

log = logging.getLogger(__name__)

TOP_LEVEL_FILES = ("model_index.json", "ollimg.json", "README.md")
OTHER_WEIGHTS = {".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx", ".gguf"}
SKIP_DIRS = {".cache", ".git", ".huggingface"}
_SHARD = re.compile(r"(.+)-(\d+)-of-(\d+)\.safetensors")


@dataclass
class Source:
    """What `create` imports, all of it read and checked before anything is written."""

    root: Path
    origin: dict
    index: dict
    components: dict[str, list]
    files: dict[str, Path] = field(default_factory=dict)
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    license: str | None = None


def read_source(path: Path) -> Source:
    """Resolve `path` to a model directory and read its layout, headers and JSON files."""
    root, origin = _resolve(path.expanduser())
    index = _read_json(root / "model_index.json")
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise InvalidModel(f"{root}/model_index.json has no _class_name: not a diffusers pipeline")
    src = Source(root, origin, index, {})
    for key in TOP_LEVEL_FILES:
        if (root / key).is_file():
            src.files[key] = root / key
    for lic in sorted(root.glob("LICENSE*")):
        if lic.is_file():
            src.files[lic.name] = lic
    for component, value in index.items():
        if component.startswith("_") or not isinstance(value, list) or len(value) != 2 or value == [None, None]:
            continue
        cdir = root / component
        if not cdir.is_dir():
            raise InvalidModel(f"model_index.json lists {component!r} but {cdir} is missing")
        src.components[component] = value
        _read_component(src, component, cdir)
    if not src.tensors:
        raise InvalidModel(f"{root} holds no safetensors weights")
    if "ollimg.json" in src.files:
        src.extra = _read_json(src.files["ollimg.json"])
        if not isinstance(src.extra, dict) or not isinstance(src.extra.get("defaults", {}), dict):
            raise InvalidModel(f"{src.files['ollimg.json']}: expected an object with an optional 'defaults' object")
    src.license = src.extra.get("license") or _readme_license(src.files.get("README.md"))
    return src


def _resolve(path: Path) -> tuple[Path, dict]:
    if not path.exists():
        raise InvalidInput(f"{path} does not exist")
    if not path.is_dir():
        raise InvalidModel(f"{path} is not a directory; give the model's diffusers directory")
    path = path.absolute()
    if (path / "snapshots").is_dir() and (path / "refs").is_dir():
        ref = path / "refs" / "main"
        if not ref.is_file():
            raise InvalidModel(f"{path} is a Hugging Face cache directory without refs/main; give a snapshots/<rev> dir")
        revision = ref.read_text().strip()
        origin = {"kind": "hf-cache", "path": str(path), "repo": _repo(path.name), "revision": revision}
        path = path / "snapshots" / revision
    elif path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        origin = {"kind": "hf-cache", "path": str(path), "repo": _repo(path.parent.parent.name), "revision": path.name}
    else:
        origin = {"kind": "diffusers", "path": str(path)}
    if not (path / "model_index.json").is_file():
        raise InvalidModel(f"{path} is not a diffusers model directory: it has no model_index.json")
    return path, origin


def _repo(dirname: str) -> str | None:
    parts = dirname.split("--")
    return "/".join(parts[1:]) if parts[0] == "models" and len(parts) > 1 else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidModel(f"{path}: not valid JSON ({e})") from None


def _read_component(src: Source, component: str, cdir: Path) -> None:
    weights: list[Path] = []
    indexes: list[Path] = []
    for path in sorted(cdir.rglob("*")):
        rel = path.relative_to(cdir)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.name.endswith(".safetensors.index.json"):
            indexes.append(path)
        elif path.suffix == ".safetensors":
            weights.append(path)
        elif path.suffix not in OTHER_WEIGHTS:
            if path.suffix == ".json":
                _read_json(path)
            src.files[f"{component}/{rel.as_posix()}"] = path
    # Variants (`model.fp16.safetensors`) are alternatives to the plain weights; take the plain ones.
    plain = [w for w in weights if "." not in w.name[: -len(".safetensors")]] or weights
    if weights and len(plain) < len(weights):
        log.info("%s: skipping variant weights %s", component, [w.name for w in weights if w not in plain])
    if not weights and any(p.suffix in OTHER_WEIGHTS for p in cdir.iterdir()):
        raise InvalidModel(f"{cdir} has weights only in a non-safetensors format; ollimg imports safetensors only")
    _check_shards(cdir, plain, [i for i in indexes if "." not in i.name[: -len(".safetensors.index.json")]])
    for path in plain:
        tensors, _ = read_header(path)
        for tname, ref in tensors.items():
            title = f"{component}/{tname}"
            if title in src.tensors:
                raise InvalidModel(f"{cdir}: tensor {tname!r} appears in two files ({src.tensors[title].path.name}, {path.name})")
            src.tensors[title] = ref


def _check_shards(cdir: Path, weights: list[Path], indexes: list[Path]) -> None:
    """Every shard an index names, or a `-0000k-of-0000n` series implies, is there and matches."""
    present = {w.name for w in weights}
    for match in filter(None, (_SHARD.fullmatch(n) for n in present)):
        total = int(match.group(3))
        for k in range(1, total + 1):
            shard = f"{match.group(1)}-{k:0{len(match.group(2))}d}-of-{match.group(3)}.safetensors"
            if shard not in present:
                raise InvalidModel(f"{cdir}: shard {shard} is missing ({total} shards expected)")
    for index in indexes:
        data = _read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise InvalidModel(f"{index}: no weight_map")
        by_shard: dict[str, set[str]] = {}
        for tname, shard in weight_map.items():
            by_shard.setdefault(shard, set()).add(tname)
        for shard, names in sorted(by_shard.items()):
            if shard not in present:
                raise InvalidModel(f"{cdir}: shard {shard} named in {index.name} is missing")
            missing = names - set(read_header(cdir / shard)[0])
            if missing:
                raise InvalidModel(f"{cdir / shard}: lacks {len(missing)} tensors that {index.name} puts there, e.g. {sorted(missing)[0]!r}")


def _readme_license(readme: Path | None) -> str | None:
    if readme is None:
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    front = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    found = front and re.search(r"^license:\s*['\"]?([^'\"\n]+?)['\"]?\s*$", front.group(1), re.M)
    return found.group(1) if found else None
