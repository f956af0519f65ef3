"""`create`: import a Hugging Face diffusers-layout model into the store.

Accepts a diffusers directory, a Hugging Face cache snapshot (`.../snapshots/<rev>`, files are
symlinks into `blobs/`) or a cache repo directory (`models--org--name`: refs/main picks the
snapshot). `model_index.json` says which component directories belong to the model. Every
tensor of every safetensors shard becomes its own blob (a one-tensor safetensors file), every
other file of a component (configs, tokenizer files) and the top-level model_index.json,
ollimg.json, README.md and LICENSE become file layers. Shard index files are not imported: they
name shards the store does not keep.

Only files inside the model directory are read: a symlink that resolves elsewhere is refused, except
that a Hugging Face cache snapshot's links may resolve anywhere inside its cache repo directory
(`models--org--name/blobs`). A path that holds no model gets one answer whether or not it exists,
so `/api/create` tells a caller nothing about the server's other files.

Everything is read and checked before the first write (headers, shards, JSON), so bad input
leaves the store untouched. Tensors are hashed in place (mmap) and copied by the kernel in a
pool of threads; a tensor already stored is not written again. Blobs go in under the shared
store lock; the manifest is written last. On failure the blobs this call added are removed when
no other writer is busy (else `prune` removes them). `--dtype bf16` and `--quantize fp8` convert
tensors on the way (`ollimg.quantize`, imported only then, since it imports torch).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ollimg.blobs import BlobWriter, TensorRef, read_header, tensor_blob_header
from ollimg.errors import Busy, Cancelled, InvalidInput, InvalidModel, OllimgError
from ollimg.manifest import Manifest, Model, Name, Store
from ollimg.manifest.manifest import CONFIG_TYPE, Descriptor, file_layer, tensor_layer
from ollimg.progress import OnProgress, Progress

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
QUANTIZE = ("fp8",)
DTYPES = ("bf16",)
TOP_LEVEL_FILES = ("model_index.json", "ollimg.json", "README.md")
OTHER_WEIGHTS = {".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx", ".gguf"}
SKIP_DIRS = {".cache", ".git", ".huggingface"}
RESERVED = {"format_version", "architecture", "components", "parameters", "quantization", "dtype", "source",
            "created", "capabilities", "size"}
_SHARD = re.compile(r"(.+)-(\d+)-of-(\d+)\.safetensors")


@dataclass
class Source:
    """What `create` imports, all of it read and checked before anything is written."""

    root: Path
    allowed: Path  # every file read must resolve inside this directory
    origin: dict
    index: dict
    components: dict[str, list]
    files: dict[str, Path] = field(default_factory=dict)
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    license: str | None = None


def create(
    store: Store, name: Name | str, source: Path | str, *, quantize: str | None = None,
    dtype: str | None = None, on_progress: OnProgress | None = None,
) -> Model:
    """Import the model at `source` as `name`; returns the stored Model (with new/deduplicated bytes)."""
    name = Name.parse(name) if isinstance(name, str) else name
    if quantize not in (None, *QUANTIZE):
        raise InvalidInput(f"unsupported --quantize {quantize!r}: use {', '.join(QUANTIZE)}")
    if dtype not in (None, *DTYPES):
        raise InvalidInput(f"unsupported --dtype {dtype!r}: use {', '.join(DTYPES)}")
    progress = on_progress or (lambda p: None)
    progress(Progress(f"reading {source}"))
    src = read_source(Path(source))
    pending: list[BlobWriter] = []  # every blob this call writes; they land together before the manifest
    try:
        with store.lock():
            return _import(store, name, src, quantize, dtype, progress, pending)
    except BaseException:
        for writer in pending:
            writer.abort()  # a blob that has not landed yet is only a temp file
        _remove_added(store, [w.digest for w in pending if w.new])
        raise


def read_source(path: Path) -> Source:
    """Resolve `path` to a model directory and read its layout, headers and JSON files."""
    root, allowed, origin = _resolve(path.expanduser())
    index = _read_json(_inside(root / "model_index.json", allowed))
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise InvalidModel(f"{root}/model_index.json has no _class_name: not a diffusers pipeline")
    src = Source(root, allowed, origin, index, {})
    for key in TOP_LEVEL_FILES:
        if (root / key).is_file():
            src.files[key] = _inside(root / key, allowed)
    for lic in sorted(root.glob("LICENSE*")):
        if lic.is_file():
            src.files[lic.name] = _inside(lic, allowed)
    for component, value in index.items():
        if component.startswith("_") or not isinstance(value, list) or len(value) != 2 or value == [None, None]:
            continue
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", component) or ".." in component:
            raise InvalidModel(f"model_index.json names a component {component[:80]!r} that is not a plain directory name")
        cdir = root / component
        if not cdir.is_dir():
            raise InvalidModel(f"model_index.json lists {component!r} but {cdir} is missing")
        _inside(cdir, allowed)
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


def _resolve(path: Path) -> tuple[Path, Path, dict]:
    """(model directory, the directory its files must resolve inside, origin)."""
    path = path.absolute()
    no_model = InvalidModel(f"{path} is not a diffusers model directory (a readable directory with a "
                            "model_index.json, or a Hugging Face cache repo or snapshot); give the model's directory")
    try:
        if (path / "snapshots").is_dir() and (path / "refs").is_dir():
            allowed = path.resolve()
            ref = path / "refs" / "main"
            revision = ref.read_text().strip() if ref.is_file() else ""
            if not re.fullmatch(r"[0-9a-f]{40}", revision):
                raise InvalidModel(f"{path} is a Hugging Face cache directory without a commit in refs/main; "
                                   "give a snapshots/<rev> dir")
            origin = {"kind": "hf-cache", "path": str(path), "repo": _repo(path.name), "revision": revision}
            path = path / "snapshots" / revision
        elif path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
            allowed = path.parent.parent.resolve()
            origin = {"kind": "hf-cache", "path": str(path), "repo": _repo(path.parent.parent.name), "revision": path.name}
        else:
            allowed = path.resolve()
            origin = {"kind": "diffusers", "path": str(path)}
        if not (path / "model_index.json").is_file():
            raise no_model
    except OSError:
        raise no_model from None
    return path, allowed, origin


def _inside(path: Path, allowed: Path) -> Path:
    """`path`, if it resolves inside `allowed`; a symlink out of the model is refused (never followed)."""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise InvalidModel(f"{path} cannot be read (a broken or looping link?)") from None
    if not target.is_relative_to(allowed):
        raise InvalidModel(f"{path} is a link to a file outside the model directory; ollimg does not follow it. "
                           "Copy the file into the model directory if it belongs to the model")
    return path


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
        _inside(path, src.allowed)
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


class _Meter:
    """Adds up bytes from worker threads and reports them at most ten times a second."""

    def __init__(self, progress: OnProgress, status: str, total: int):
        self.progress, self.status, self.total = progress, status, total
        self.done, self.last = 0, 0.0
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def add(self, n: int) -> None:
        if self.stop.is_set():
            raise Cancelled("import cancelled")
        with self.lock:
            self.done += n
            now = time.monotonic()
            if now - self.last >= 0.1 or self.done >= self.total:
                self.last = now
                self.progress(Progress(self.status, None, self.done, self.total))


@dataclass
class _Stored:
    title: str
    digest: str
    size: int
    writer: BlobWriter | None  # None: the blob was already stored
    dtype: str
    shape: tuple[int, ...]
    error: tuple[float, float] | None = None  # (error_sq, norm_sq) of a quantized weight
    scale_of: str | None = None  # for a scale tensor: the weight it belongs to

    @property
    def new(self) -> bool:
        """Whether this create added the blob (known once it has landed)."""
        return self.writer is not None and self.writer.new


def _store_tensor(store: Store, title: str, ref: TensorRef, quantize: str | None, dtype: str | None,
                  meter: _Meter, pending: list[BlobWriter]) -> list[_Stored]:
    stored = _convert(store, title, ref, quantize, dtype, meter)
    pending.extend(s.writer for s in stored if s.writer)  # list.extend is atomic: threads share `pending`
    return stored


def _convert(store: Store, title: str, ref: TensorRef, quantize: str | None, dtype: str | None, meter: _Meter) -> list[_Stored]:
    if quantize == "fp8":
        from ollimg.quantize import fp8

        if fp8.quantizes(title, ref):
            q = fp8.quantize_tensor(store.blobs, ref, meter.add)
            return [
                _Stored(title, *q.weight, fp8.DTYPE, ref.shape, error=(q.error_sq, q.norm_sq)),
                _Stored(title + fp8.SCALE_SUFFIX, *q.scale, fp8.SCALE_DTYPE, ref.shape[:1], scale_of=title),
            ]
    if dtype is not None:
        from ollimg.quantize import cast

        target = cast.DTYPES[dtype]
        if cast.converts(ref, target):
            return [_Stored(title, *cast.cast_tensor(store.blobs, ref, target, meter.add), target, ref.shape)]
    header = tensor_blob_header(ref.dtype, ref.shape)
    return [_Stored(title, *store.blobs.put_range(ref.path, ref.offset, ref.nbytes, header, meter.add), ref.dtype, ref.shape)]


def _workers() -> int:
    return min(8, (os.cpu_count() or 2) + 1)


def _import(store: Store, name: Name, src: Source, quantize: str | None, dtype: str | None,
            progress: OnProgress, pending: list[BlobWriter]) -> Model:
    files = _import_files(store, src, pending)
    stored = _import_tensors(store, src, quantize, dtype, progress, pending)
    config = _config(src, stored, quantize, dtype)
    with store.blobs.writer() as w:
        w.write(json.dumps(config, indent=1, sort_keys=True).encode())
        config_digest, config_size = w.commit(sync=False), w.size
    pending.append(w)
    layers = [file_layer(s.title, s.digest, s.size) for s in files]
    layers += [tensor_layer(s.title, s.digest, s.size, s.dtype, s.shape) for s in stored]
    manifest = Manifest(config=Descriptor(mediaType=CONFIG_TYPE, digest=config_digest, size=config_size), layers=layers)
    store.blobs.land(pending)  # durable (one syncfs), then visible, before a manifest names them
    progress(Progress("writing manifest"))
    model = store.put_manifest(name, manifest.dump())
    model.new_bytes = sum(s.size for s in files + stored if s.new)
    model.deduplicated_bytes = sum(s.size for s in files + stored if not s.new)
    progress(Progress("success"))
    return model


def _import_files(store: Store, src: Source, pending: list[BlobWriter]) -> list[_Stored]:
    files = []
    for title, path in sorted(src.files.items()):
        with store.blobs.writer() as w:
            w.write(path.read_bytes())
            files.append(_Stored(title, w.commit(sync=False), w.size, w, "", ()))
        pending.append(w)
    return files


def _import_tensors(store: Store, src: Source, quantize: str | None, dtype: str | None,
                    progress: OnProgress, pending: list[BlobWriter]) -> list[_Stored]:
    """Every tensor in a pool of threads, biggest first (no long tail); sorted by title."""
    if quantize or dtype:
        import ollimg.quantize.cast  # noqa: F401  (import torch once, before the threads)
        import ollimg.quantize.fp8  # noqa: F401
    meter = _Meter(progress, f"importing {src.root.name}", sum(ref.nbytes for ref in src.tensors.values()))
    jobs = sorted(src.tensors.items(), key=lambda item: -item[1].nbytes)
    with ThreadPoolExecutor(_workers(), thread_name_prefix="ollimg-create") as pool:
        futures = [pool.submit(_store_tensor, store, title, ref, quantize, dtype, meter, pending) for title, ref in jobs]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f.done() and f.exception() is not None), None)
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
        except BaseException:
            meter.stop.set()  # running jobs stop at their next chunk
            for future in futures:
                future.cancel()
            raise
    return sorted((s for future in futures for s in future.result()), key=lambda s: s.title)


def _config(src: Source, stored: list[_Stored], quantize: str | None, dtype: str | None) -> dict:
    components = {}
    for component, (library, class_name) in src.components.items():
        info = {"library": library, "class_name": class_name}
        mine = [s for s in stored if s.title.startswith(component + "/")]
        weights = [s for s in mine if s.scale_of is None]
        if weights:
            dtypes: dict[str, int] = {}
            for s in weights:
                dtypes[s.dtype] = dtypes.get(s.dtype, 0) + math.prod(s.shape)
            info |= {"parameters": sum(dtypes.values()), "dtypes": dtypes, "tensors": len(weights),
                     "size": sum(s.size for s in mine)}
        components[component] = info
    config = {k: v for k, v in src.extra.items() if k not in RESERVED}
    config |= {
        "format_version": FORMAT_VERSION,
        "architecture": src.index["_class_name"],
        "components": components,
        "parameters": sum(c.get("parameters", 0) for c in components.values()),
        "quantization": _quantization(stored) if quantize else None,
        "dtype": dtype,
        "source": src.origin,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "license": src.license,
        "capabilities": ["image"],
        "defaults": src.extra.get("defaults", {}),
    }
    return config


def _quantization(stored: list[_Stored]) -> dict:
    from ollimg.quantize import fp8

    errors = {s.title: s.error for s in stored if s.error is not None}
    error_sq = sum(e for e, _ in errors.values())
    norm_sq = sum(n for _, n in errors.values())
    per_tensor = {t: math.sqrt(e / n) if n > 0 else 0.0 for t, (e, n) in errors.items()}
    return {
        "scheme": fp8.SCHEME,
        "weight_dtype": fp8.DTYPE,
        "scale_dtype": fp8.SCALE_DTYPE,
        "scale_suffix": fp8.SCALE_SUFFIX,
        "granularity": "per_output_channel",
        "dequantize": "weight = fp8.float() * scale[:, None]",
        "rule": fp8.RULE,
        "tensors": sorted(errors),
        "rel_rms_error": math.sqrt(error_sq / norm_sq) if norm_sq > 0 else 0.0,
        "max_rel_rms_error": max(per_tensor.values(), default=0.0),
        "tensor_rel_rms_error": per_tensor,
    }


def _remove_added(store: Store, added: list[str]) -> None:
    """After a failed create: drop the blobs it added that no manifest names, if no writer is busy."""
    if not added:
        return
    try:
        with store.lock(exclusive=True, wait=False):
            referenced = store.referenced()
            for digest in set(added) - referenced:
                store.blobs.delete(digest)
    except Busy:
        log.warning("another writer is busy; %d blobs of the failed import stay until: ollimg prune", len(added))
    except OllimgError as e:
        log.warning("could not remove the blobs of the failed import (%s); run: ollimg prune", e)
