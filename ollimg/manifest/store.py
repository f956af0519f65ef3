"""The model store: `blobs/sha256-<hex>` plus `manifests/<host>/<namespace>/<model>/<tag>`.

A manifest is written (atomically) only after every blob it names exists with the right size,
so a crash never leaves a model that points at a missing or partial blob. Writers of blobs and
manifests hold the store lock shared; `prune` and `rm` hold it exclusive, so they never delete a
blob that a running create or pull is about to name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Iterator

from ollimg import config
from ollimg.blobs import BlobStore, TensorRef, read_header
from ollimg.blobs.store import fsync_dir, no_space
from ollimg.errors import Busy, InvalidModel, ModelNotFound, NoSpace, StoreError
from ollimg.manifest.manifest import Manifest
from ollimg.manifest.name import Name


@dataclass
class Model:
    """A stored model: its name, manifest bytes and parsed manifest."""

    name: Name
    raw: bytes
    manifest: Manifest
    modified: datetime
    store: "Store"
    new_bytes: int = 0  # set by create/pull: bytes this call added to the store
    deduplicated_bytes: int = 0  # set by create/pull: bytes already stored

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()

    @property
    def id(self) -> str:
        return self.digest.split(":", 1)[1][:12]

    @property
    def size(self) -> int:
        return self.manifest.size

    @cached_property
    def config(self) -> dict:
        try:
            value = json.loads(self.store.blobs.read_bytes(self.manifest.config.digest))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            value = None
        if not isinstance(value, dict):  # pulled from a registry that lies, or damaged: one model, not the list
            raise InvalidModel(f"model {self.name.display()}: its config is not a JSON object; "
                               f"remove it (ollimg rm {self.name.display()}) and pull it again")
        return value

    def files(self) -> dict[str, Path]:
        """Path-style title (`tokenizer/tokenizer.json`) -> blob path, for every file layer."""
        return {layer.title: self.store.blobs.path(layer.digest) for layer in self.manifest.file_layers()}

    def tensors(self, prefix: str = "") -> dict[str, TensorRef]:
        """Title -> where its bytes lie, for every tensor layer whose title starts with `prefix`."""
        refs = {}
        for layer in self.manifest.tensor_layers():
            if not layer.title.startswith(prefix):
                continue
            path = self.store.blobs.path(layer.digest)
            try:
                entries, _ = read_header(path)
            except FileNotFoundError:
                raise StoreError(f"blob of {layer.title} is missing; run: ollimg verify") from None
            if len(entries) != 1:
                raise InvalidModel(f"blob of {layer.title} holds {len(entries)} tensors, expected 1")
            refs[layer.title] = next(iter(entries.values()))
        return refs


class Store:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else config.models_dir()
        self.blobs = BlobStore(self.root / "blobs")
        self.manifests_root = self.root / "manifests"

    @contextlib.contextmanager
    def lock(self, exclusive: bool = False, wait: bool = True) -> Iterator[None]:
        """Shared for writers of blobs and manifests, exclusive for deleters; Busy if not `wait`."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            try:
                fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise Busy(f"the model store {self.root} is in use by another ollimg command; retry when it ends") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def manifest_path(self, name: Name) -> Path:
        return self.manifests_root / name.host / name.namespace / name.model / name.tag

    def get(self, name: Name) -> Model:
        path = self.manifest_path(name)
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except (FileNotFoundError, NotADirectoryError):
            raise ModelNotFound(f'model "{name.display()}" not found; run: ollimg pull {name.display()}') from None
        model = Model(name, raw, Manifest.parse(raw), datetime.fromtimestamp(mtime, timezone.utc), self)
        if name.digest and model.digest != name.digest:
            raise ModelNotFound(f'model "{name.display()}" not found: the local tag points at {model.digest}')
        return model

    def exists(self, name: Name) -> bool:
        return self.manifest_path(name).is_file()

    def put_manifest(self, name: Name, raw: bytes) -> Model:
        """Write a manifest after checking that every blob it names is present and whole."""
        manifest = Manifest.parse(raw)
        for desc in manifest.blobs():
            if not self.blobs.has(desc.digest, desc.size):
                raise StoreError(f"cannot write manifest for {name.display()}: blob {desc.digest} is missing or incomplete")
        path = self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if no_space(e):
                raise NoSpace(f"no space left on the device while writing to {self.root}") from None
            raise StoreError(f"cannot write manifest: {e}") from None
        fsync_dir(path.parent)
        return self.get(name)

    def models(self) -> list[Model]:
        found = []
        if not self.manifests_root.is_dir():
            return found
        for path in sorted(self.manifests_root.glob("*/*/*/*")):
            if not path.is_file() or path.name.startswith(".tmp-"):
                continue
            host, namespace, model, tag = path.relative_to(self.manifests_root).parts
            try:
                found.append(self.get(Name(host, namespace, model, tag)))
            except (StoreError, ModelNotFound):
                continue
        return found

    def referenced(self) -> set[str]:
        digests = set()
        for model in self.models():
            digests.update(d.digest for d in model.manifest.blobs())
        return digests

    def remove_manifest(self, name: Name) -> None:
        path = self.manifest_path(name)
        if not path.is_file():
            raise ModelNotFound(f'model "{name.display()}" not found')
        path.unlink()
        for parent in (path.parent, path.parent.parent, path.parent.parent.parent):
            with contextlib.suppress(OSError):
                parent.rmdir()
