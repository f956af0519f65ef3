"""Operations on stored models that the CLI and the server share: info, remove, copy, prune, verify.

Deleting (`remove`, `prune`) holds the store lock exclusively, so no create or pull is halfway
through naming a blob that is about to go; `copy` and `verify` hold it shared. Imports only the
store layers (manifest, blobs): no httpx, fastapi, rich, torch or mlx.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ollimg.blobs.store import PARTIAL_PREFIX
from ollimg.errors import Busy, ModelNotFound, StoreError
from ollimg.manifest import Model, Name, Store
from ollimg.progress import OnProgress, Progress

log = logging.getLogger(__name__)


def info(model: Model) -> dict:
    """What `show` prints: the config blob's description plus sizes and ids."""
    config = model.config
    unique = {d.digest: d.size for d in model.manifest.blobs()}
    quant = config.get("quantization")
    return {
        "name": model.name.display(),
        "id": model.id,
        "digest": model.digest,
        "architecture": config.get("architecture"),
        "parameters": config.get("parameters"),
        "components": config.get("components", {}),
        "dtype": config.get("dtype"),
        "quantization": None if not quant else {
            "scheme": quant.get("scheme"),
            "tensors": len(quant.get("tensors", [])),
            "rel_rms_error": quant.get("rel_rms_error"),
            "max_rel_rms_error": quant.get("max_rel_rms_error"),
        },
        "size": model.size,
        "size_on_disk": sum(unique.values()),
        "layers": len(model.manifest.layers),
        "capabilities": config.get("capabilities", []),
        "license": config.get("license"),
        "description": config.get("description"),
        "defaults": config.get("defaults", {}),
        "source": config.get("source"),
        "created": config.get("created"),
        "modified": model.modified.isoformat(timespec="seconds"),
    }


@dataclass
class Removed:
    names: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0


def not_found(name: Name, known: Iterable[str], pull: bool = True) -> ModelNotFound:
    """The error for a model the store lacks: a close known name if there is one (a typo), else,
    with `pull`, how to pull it."""
    message = f'model "{name.display()}" not found'
    close = difflib.get_close_matches(name.display(), list(known), n=1, cutoff=0.75)
    if close:
        return ModelNotFound(f'{message}; did you mean "{close[0]}"?')
    return ModelNotFound(f"{message}; run: ollimg pull {name.display()}" if pull else message)


def remove(store: Store, names: list[Name]) -> Removed:
    """Remove the manifests, then every blob that no remaining manifest names. All names must exist."""
    result = Removed()
    with store.lock(exclusive=True):
        try:
            models = [store.get(name) for name in names]  # ModelNotFound before anything is removed
        except ModelNotFound:
            stored = [m.name.display() for m in store.models()]
            missing = next(n for n in names if n.display() not in stored)
            raise not_found(missing, stored, pull=False) from None
        for model in models:
            store.remove_manifest(model.name)
            result.names.append(model.name.display())
        referenced = store.referenced()
        for digest in {d.digest for m in models for d in m.manifest.blobs()} - referenced:
            result.bytes += _delete(store, digest)
            result.blobs += 1
    return result


def copy(store: Store, source: Name, target: Name) -> Model:
    """A second name for the same manifest (the blobs are shared)."""
    with store.lock():
        return store.put_manifest(target, store.get(source).raw)


@dataclass
class Pruned:
    blobs: int = 0
    bytes: int = 0  # disk space given back (blocks, not the apparent size of sparse files)
    temp_files: int = 0


RESUMABLE = 24 * 3600  # seconds an interrupted pull's partial download waits for a pull to continue it


def prune(store: Store) -> Pruned:
    """Remove blobs no manifest names and temp files of interrupted writes."""
    result = Pruned()
    with store.lock(exclusive=True):  # no writer is running, so every temp file is stale
        referenced = store.referenced()
        for digest in store.blobs.digests():
            if digest not in referenced:
                result.bytes += _delete(store, digest)
                result.blobs += 1
        _remove_temp_files(store, result, keep_resumable=False)
    return result


def remove_stale_temp_files(store: Store) -> Pruned:
    """The temp files interrupted writers left (a killed pull, create or load), removed after a pull.

    Only while no writer runs: every writer, in any process, holds the store lock shared while it
    has temp files, so when the exclusive lock is free at once none of them is in use; when it is
    not, nothing is removed (the next pull, or `prune`, does it). Then `.tmp-<id>` files all go
    (nothing ever continues them), and a partial download of a large blob goes once its blob is
    stored or when no byte has reached it for RESUMABLE seconds; until then a pull resumes it.
    """
    result = Pruned()
    try:
        with store.lock(exclusive=True, wait=False):
            _remove_temp_files(store, result, keep_resumable=True)
    except Busy:
        log.debug("another writer is busy with %s: its temp files stay", store.root)
    except OSError as e:  # a clean-up that fails must not hide how the pull ended
        log.warning("could not remove stale temp files in %s (%s); run: ollimg prune", store.root, e)
    return result


def _remove_temp_files(store: Store, result: Pruned, keep_resumable: bool) -> None:
    """Call with the store lock held exclusively."""
    temps = store.blobs.temp_files()
    if store.manifests_root.is_dir():
        temps += [p for p in store.manifests_root.rglob(".tmp-*") if p.is_file()]
    keep = _resumable(store, temps) if keep_resumable else set()
    for path in temps:
        if path not in keep:
            result.bytes += _unlink(path)
            result.temp_files += 1


def _resumable(store: Store, temps: list) -> set:
    """The partial downloads (each file and its resume record) a later pull may still continue."""
    groups: dict[str, list] = {}
    for path in temps:
        if path.name.startswith(PARTIAL_PREFIX):
            groups.setdefault(path.name[len(PARTIAL_PREFIX):][:64], []).append(path)
    keep = set()
    now = time.time()
    for hex_digest, paths in groups.items():
        try:
            newest = max(p.stat().st_mtime for p in paths)
            stored = store.blobs.has("sha256:" + hex_digest)
        except (OSError, StoreError):  # gone meanwhile, or not a digest: not ours to keep
            continue
        if not stored and now - newest < RESUMABLE:
            keep.update(paths)
    return keep


@dataclass
class Verified:
    blobs: int = 0
    bytes: int = 0
    bad: list[str] = field(default_factory=list)  # one line per problem
    bad_digests: list[str] = field(default_factory=list)
    affected: list[str] = field(default_factory=list)  # models that use a bad blob
    removed: int = 0  # corrupt blobs deleted by fix=True

    @property
    def ok(self) -> bool:
        return not self.bad


def verify(store: Store, name: Name | None = None, on_progress: OnProgress | None = None, fix: bool = False) -> Verified:
    """Re-hash the blobs of one model (or of the whole store) and check every manifest's blobs exist.

    `fix` deletes blobs whose content does not match their digest, so that the next create or
    pull of a model that uses them writes them again (both skip blobs that are already present).
    """
    result = _verify(store, name, on_progress)
    if fix and result.bad_digests:
        with store.lock(exclusive=True):
            for digest in result.bad_digests:
                if store.blobs.has(digest) and store.blobs.hash_file(digest) != digest:
                    store.blobs.delete(digest)
                    result.removed += 1
    return result


def _verify(store: Store, name: Name | None, on_progress: OnProgress | None) -> Verified:
    with store.lock():
        models = [store.get(name)] if name else store.models()
        sizes: dict[str, int | None] = {}
        for model in models:
            sizes.update({d.digest: d.size for d in model.manifest.blobs()})
        if name is None:
            for digest in store.blobs.digests():
                sizes.setdefault(digest, None)
        result = Verified()
        total = sum(_size(store, d) for d in sizes)
        done = [0]
        lock = threading.Lock()

        def check(digest: str) -> str | None:
            problem = _check(store, digest, sizes[digest])
            with lock:
                done[0] += _size(store, digest)
                if on_progress:
                    on_progress(Progress("verifying", None, done[0], total))
            return problem

        with ThreadPoolExecutor(min(8, (os.cpu_count() or 2) + 1)) as pool:
            for digest, problem in zip(sizes, pool.map(check, sizes)):
                result.blobs += 1
                if problem:
                    result.bad.append(f"{digest}: {problem}")
                    result.bad_digests.append(digest)
        result.bytes = total
        bad = set(result.bad_digests)
        result.affected = [m.name.display() for m in models if bad & {d.digest for d in m.manifest.blobs()}]
        return result


def _check(store: Store, digest: str, size: int | None) -> str | None:
    path = store.blobs.path(digest)
    if not path.is_file():
        return "missing"
    if size is not None and path.stat().st_size != size:
        return f"has {path.stat().st_size} bytes, the manifest says {size}"
    actual = store.blobs.hash_file(digest)
    return None if actual == digest else f"content hashes to {actual}"


def _size(store: Store, digest: str) -> int:
    try:
        return store.blobs.path(digest).stat().st_size
    except FileNotFoundError:
        return 0


def _delete(store: Store, digest: str) -> int:
    return _unlink(store.blobs.path(digest))


def _unlink(path) -> int:
    """Removes a file; returns the disk space that gives back."""
    try:
        st = path.lstat()
        path.unlink()
    except FileNotFoundError:
        return 0
    return _freed(st)


def _freed(st: os.stat_result) -> int:
    """What removing a file frees: its blocks on disk (a sparse partial download of 100 GB may hold
    a few KB; a small blob a whole block), nothing while another hard link keeps the data."""
    if st.st_nlink > 1:
        return 0
    blocks = getattr(st, "st_blocks", None)  # not on Windows: there, the size
    return st.st_size if blocks is None else blocks * 512

