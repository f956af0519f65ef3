"""`create`: import a Hugging Face diffusers-layout model into the store.

The directory (a diffusers dir or a Hugging Face cache layout) is read by `ollimg.diffusers_dir`.
Every tensor of every safetensors shard becomes its own blob (a one-tensor safetensors file),
every other file it lists (configs, tokenizer files, model_index.json, ollimg.json, README.md,
LICENSE) a file layer.

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
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ollimg.blobs import BlobWriter, TensorRef, tensor_blob_header
from ollimg.errors import Busy, Cancelled, InvalidInput, OllimgError
from ollimg.diffusers_dir import Source, read_source
from ollimg.manifest import Manifest, Model, Name, Store
from ollimg.manifest.manifest import CONFIG_TYPE, Descriptor, file_layer, tensor_layer
from ollimg.progress import OnProgress, Progress

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
QUANTIZE = ("fp8",)
DTYPES = ("bf16",)
RESERVED = {"format_version", "architecture", "components", "parameters", "quantization", "dtype", "source",
            "created", "capabilities", "size"}


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
    src = read_source(Path(source))
    fp8 = _fp8_set(src) if quantize == "fp8" else None
    # The first progress comes once the source is read and checked: a server answers what fails
    # up to here with a 4xx before its stream starts.
    progress(Progress(f"importing {src.root.name}", None, 0, sum(ref.nbytes for ref in src.tensors.values())))
    pending: list[BlobWriter] = []  # every blob this call writes; they land together before the manifest
    try:
        with store.lock():
            return _import(store, name, src, fp8, dtype, progress, pending)
    except BaseException:
        for writer in pending:
            writer.abort()  # a blob that has not landed yet is only a temp file
        _remove_added(store, [w.digest for w in pending if w.new])
        raise


def _fp8_set(src: Source) -> dict:
    """The family's FP8 set: which weights of which component `--quantize fp8` may store as float8."""
    from ollimg.runtime import families

    return families.weights(src.index["_class_name"], f"{src.root}: --quantize fp8").FP8


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


def _store_tensor(store: Store, title: str, ref: TensorRef, fp8: dict | None, dtype: str | None,
                  meter: _Meter, pending: list[BlobWriter]) -> list[_Stored]:
    stored = _convert(store, title, ref, fp8, dtype, meter)
    pending.extend(s.writer for s in stored if s.writer)  # list.extend is atomic: threads share `pending`
    return stored


def _convert(store: Store, title: str, ref: TensorRef, fp8_set: dict | None, dtype: str | None,
             meter: _Meter) -> list[_Stored]:
    """`ref` as stored: quantized when `fp8_set` (the family's FP8 set) names it, else cast or copied."""
    if fp8_set is not None:
        from ollimg.quantize import fp8

        if fp8.quantizes(title, ref, fp8_set):
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


def _import(store: Store, name: Name, src: Source, fp8: dict | None, dtype: str | None,
            progress: OnProgress, pending: list[BlobWriter]) -> Model:
    files = _import_files(store, src, pending)
    stored = _import_tensors(store, src, fp8, dtype, progress, pending)
    config = _config(src, stored, fp8, dtype)
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


def _import_tensors(store: Store, src: Source, fp8: dict | None, dtype: str | None,
                    progress: OnProgress, pending: list[BlobWriter]) -> list[_Stored]:
    """Every tensor in a pool of threads, biggest first (no long tail); sorted by title."""
    if fp8 is not None or dtype:
        import ollimg.quantize.cast  # noqa: F401  (import torch once, before the threads)
        import ollimg.quantize.fp8  # noqa: F401
    meter = _Meter(progress, f"importing {src.root.name}", sum(ref.nbytes for ref in src.tensors.values()))
    jobs = sorted(src.tensors.items(), key=lambda item: -item[1].nbytes)
    with ThreadPoolExecutor(_workers(), thread_name_prefix="ollimg-create") as pool:
        futures = [pool.submit(_store_tensor, store, title, ref, fp8, dtype, meter, pending) for title, ref in jobs]
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


def _config(src: Source, stored: list[_Stored], fp8: dict | None, dtype: str | None) -> dict:
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
        "quantization": _quantization(stored, fp8) if fp8 is not None else None,
        "dtype": dtype,
        "source": src.origin,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "license": src.license,
        "capabilities": ["image"],
        "defaults": src.extra.get("defaults", {}),
    }
    return config


def _quantization(stored: list[_Stored], fp8_set: dict) -> dict:
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
        "rule": {component: pattern.pattern for component, pattern in sorted(fp8_set.items())},
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
