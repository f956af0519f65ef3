"""`load`: models from an OCI image layout (a tar, a zstd-compressed tar, or a directory) into the store.

Streamed: the input is read (and decompressed) on one thread while the tar members are parsed,
hashed and written on another, a few chunks apart, so memory stays bounded whatever the size.
Every blob goes through the store's one landing path (`BlobWriter`: hashed as written, checked
against the digest its path names and its size, left pending with `commit(sync=False)`), and
nothing lands until the whole archive has been read and checked: index.json, every manifest it
names, every blob each manifest names (in the archive, or already in the store) with the size the
manifest gives. Then the pending blobs land in one batch (`BlobStore.land`) and the manifests are
written last. Any bad input (truncated, corrupt, a blob that does not match its digest, a path
outside the layout, a manifest naming a missing blob) raises InvalidModel and lands nothing.
Blobs the store already has are hashed (the archive is still checked) but not written again.
Order-independent: index.json may come before or after the blobs (ollimg writes it first, so
progress knows the totals early; skopeo and others may not). Must not import httpx or fastapi.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, TypeVar

import zstandard

from ollimg.archive import layout, tar
from ollimg.blobs import BlobWriter
from ollimg.blobs.store import check_digest
from ollimg.errors import DigestMismatch, InvalidModel, StoreError
from ollimg.manifest import Descriptor, Manifest, Model, Name, Store
from ollimg.manifest.manifest import CONFIG_TYPE
from ollimg.progress import OnProgress, Reporter

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # input read size
OUT = 4 << 20  # zstd output buffer: a chunk's output in one piece, one GIL round trip, no join
AHEAD = 8  # decompressed chunks in flight between the two threads
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
T = TypeVar("T")


@dataclass
class Loaded:
    models: list[Model]
    new_bytes: int  # blob bytes this load added to the store
    deduplicated_bytes: int  # blob bytes the store already had


def load(store: Store, source: Path | Iterable[bytes], *, on_progress: OnProgress | None = None) -> Loaded:
    """Load every model of `source`: a layout directory, an archive file, or an archive's bytes.

    Progress: per blob `loading <12hex>` (bytes of total) or `skipping <12hex>` (the store has
    it), then `writing manifest`.
    """
    loading = _Loading(store, Reporter(on_progress))
    with store.lock():
        try:
            if isinstance(source, Path) and source.is_dir():
                loading.directory(source)
            else:
                chunks = _file_chunks(source) if isinstance(source, Path) else iter(source)
                loading.stream(_read_ahead(plain_tar(chunks)))
            return loading.finish()
        finally:
            loading.abort()  # what did not land goes: everything, when anything failed


def read_chunks(f: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    """A binary stream (a file, stdin) as chunks, for `load`."""
    while data := f.read(size):
        yield data


def _file_chunks(path: Path) -> Iterator[bytes]:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InvalidModel(f"{path}: no such file or directory") from None
    except OSError as e:
        raise InvalidModel(f"cannot read {path}: {e.strerror}") from None
    with f:
        yield from read_chunks(f)


def plain_tar(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The tar bytes of an archive's bytes: decompressed when they start with zstd's magic."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= tar.BLOCK:
            break
    rest = itertools.chain([head], chunks)
    if head[:4] == ZSTD_MAGIC or (len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and 0x50 <= head[0] <= 0x5F):
        return _unzstd(rest)
    if head[257:262] == b"ustar":
        return rest
    if not head:
        raise InvalidModel("the archive is empty; nothing was loaded")
    if head[:2] == b"\x1f\x8b":
        raise InvalidModel("the archive is gzip-compressed; only .tar and .tar.zst are read: run gunzip first")
    raise InvalidModel(f"not a tar or tar.zst archive (it starts with {head[:8].hex(' ')}); nothing was loaded")


def _unzstd(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """zstd frames (one or several, each checked against its checksum when it has one)."""
    dctx = zstandard.ZstdDecompressor()
    stream, fed = dctx.decompressobj(write_size=OUT), False
    try:
        for chunk in chunks:
            while chunk:
                out = stream.decompress(chunk)
                fed = True
                if out:
                    yield out
                if not stream.eof:
                    break
                chunk = stream.unused_data
                stream, fed = dctx.decompressobj(write_size=OUT), False
    except zstandard.ZstdError as e:
        raise InvalidModel(f"the archive is corrupt ({e}); nothing was loaded") from None
    if fed:
        raise tar.truncated("the zstd stream ends inside a frame")


def _read_ahead(items: Iterator[T], depth: int = AHEAD) -> Iterator[T]:
    """`items`, produced on their own thread up to `depth` ahead (reading and decompressing run
    beside parsing, hashing and writing). An error there is raised here; closing this stops it."""
    slots: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as e:  # handed to the consumer, which raises it
            put(("error", e))
        finally:
            close = getattr(items, "close", None)
            if close:
                close()

    thread = threading.Thread(target=produce, name="ollimg-archive-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        thread.join(5)


class _Loading:
    """One load: the blobs verified so far (pending, not landed) and what index.json names."""

    def __init__(self, store: Store, report: Reporter):
        self.store, self.report = store, report
        self.layout_seen = False
        self.index: list[tuple[Name, Descriptor]] | None = None
        self.sizes: dict[str, int] = {}  # every blob the archive held, verified: digest -> size
        self.writers: dict[str, BlobWriter] = {}  # of those, the ones written here (pending)
        self.announced: set[str] = set()

    # -- reading ------------------------------------------------------------------------------

    def stream(self, chunks: Iterator[bytes]) -> None:
        reader = tar.TarReader(chunks)
        for member in reader:
            kind, digest = layout.classify(member.path)
            if member.kind == tar.DIRECTORY:
                continue
            if member.kind != tar.FILE:
                raise InvalidModel(f"the archive holds {member.path!r}, a link or special file; an image layout holds "
                                   "only files and directories; nothing was loaded")
            if kind == "layout":
                self.set_layout(_small(reader.data(), member, layout.MAX_LAYOUT))
            elif kind == "index":
                self.set_index(_small(reader.data(), member, layout.MAX_INDEX))
            elif kind == "blob":
                self.blob(digest, member.size, reader.data())
            else:
                log.info("load: ignoring %s (not part of an image layout)", member.path)

    def directory(self, root: Path) -> None:
        """An image layout directory (what `skopeo copy ... oci:DIR` writes): only the blobs its
        manifests name are read."""
        self.set_layout(_read_file(root / layout.LAYOUT_FILE, layout.MAX_LAYOUT))
        self.set_index(_read_file(root / layout.INDEX_FILE, layout.MAX_INDEX))
        wanted = [desc for _, desc in self.index or []]
        for desc in wanted:
            self._blob_file(root, desc.digest)
        for _, desc in self.index or []:
            manifest = self._manifest(desc)
            if manifest is not None:
                for blob in manifest.blobs():
                    self._blob_file(root, check_digest(blob.digest))

    def _blob_file(self, root: Path, digest: str) -> None:
        if digest in self.sizes:
            return
        path = root / layout.blob_path(digest)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return  # finish() names it, if a manifest needs it and the store lacks it
        with f:
            self.blob(digest, path.stat().st_size, read_chunks(f))

    def set_layout(self, raw: bytes) -> None:
        if self.layout_seen:
            raise InvalidModel("the archive holds oci-layout twice; nothing was loaded")
        layout.check_layout(raw)
        self.layout_seen = True

    def set_index(self, raw: bytes) -> None:
        if self.index is not None:
            raise InvalidModel("the archive holds index.json twice; nothing was loaded")
        self.index = layout.parse_index(raw)
        for _, desc in self.index:
            if desc.digest in self.sizes:  # the manifest came before index.json
                self._announce(self._manifest(desc))

    def blob(self, digest: str, size: int, pieces: Iterable[bytes | memoryview]) -> None:
        """Verify one blob of the archive; write it unless the store (or this archive) already has it."""
        if digest in self.sizes or self.store.blobs.has(digest, size):
            if digest not in self.announced and digest not in self.sizes:
                self.report.blob("skipping", digest, size, size)
            self.announced.add(digest)
            _verify(digest, size, pieces)
        else:
            self.announced.add(digest)
            self.report.blob("loading", digest, 0, size)
            writer = self.store.blobs.writer(digest, size)
            self.writers[digest] = writer
            try:
                for piece in pieces:
                    writer.write(piece)
                    self.report.blob("loading", digest, writer.size, size)
                writer.commit(sync=False)
            except DigestMismatch:
                raise _corrupt(digest, writer.digest) from None
        self.sizes[digest] = size
        named = {d.digest: d for _, d in self.index or []}
        if digest in named:
            self._announce(self._manifest(named[digest]))

    # -- checking and landing -----------------------------------------------------------------

    def finish(self) -> Loaded:
        if not self.layout_seen:
            raise InvalidModel("not an OCI image layout: there is no oci-layout file; nothing was loaded")
        if self.index is None:
            raise InvalidModel("not an OCI image layout: there is no index.json; nothing was loaded")
        needed: dict[str, int] = {}
        manifests = []
        for name, desc in self.index:
            if desc.digest not in self.sizes:
                raise InvalidModel(f"index.json names the manifest of {name.display()} ({desc.digest}), which is not in "
                                   "the archive; nothing was loaded")
            manifest = self._manifest(desc)
            assert manifest is not None
            if manifest.config.media_type != CONFIG_TYPE:
                raise InvalidModel(f"{name.display()} is not an ollimg model (its config is {manifest.config.media_type!r}); "
                                   "nothing was loaded")
            for blob in manifest.blobs():
                check_digest(blob.digest)
                held = self.sizes.get(blob.digest)
                if held is not None and held != blob.size:
                    raise InvalidModel(f"the manifest of {name.display()} gives blob {blob.digest} {blob.size} bytes; the "
                                       f"archive holds {held}; nothing was loaded")
                if held is None and not self.store.blobs.has(blob.digest, blob.size):
                    raise InvalidModel(f"the manifest of {name.display()} names blob {blob.digest}, which is in neither the "
                                       "archive nor the store; nothing was loaded")
                needed[blob.digest] = blob.size
            manifests.append((name, self._bytes(desc.digest)))
        landing = [w for digest, w in self.writers.items() if digest in needed]
        self.store.blobs.land(landing)
        new = sum(w.size for w in landing if w.new)
        self.report.status("writing manifest")
        models = [self.store.put_manifest(name, raw) for name, raw in manifests]
        return Loaded(models, new, sum(needed.values()) - new)

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()

    def _manifest(self, desc: Descriptor) -> Manifest | None:
        """The manifest `desc` names, if it has arrived (checked against the descriptor's size)."""
        if desc.digest not in self.sizes:
            return None
        if self.sizes[desc.digest] != desc.size:
            raise InvalidModel(f"index.json gives manifest {desc.digest} {desc.size} bytes; the archive holds "
                               f"{self.sizes[desc.digest]}; nothing was loaded")
        try:
            return Manifest.parse(self._bytes(desc.digest))
        except StoreError as e:
            raise InvalidModel(f"manifest {desc.digest} in the archive: {e}; nothing was loaded") from None

    def _bytes(self, digest: str) -> bytes:
        writer = self.writers.get(digest)
        path = writer.tmp if writer is not None and writer.tmp.exists() else self.store.blobs.path(digest)
        return path.read_bytes()

    def _announce(self, manifest: Manifest | None) -> None:
        """Report every blob of a manifest as soon as it is known, so progress has its total early."""
        for desc in manifest.blobs() if manifest else []:
            if desc.digest in self.announced or desc.digest in self.sizes:
                continue
            self.announced.add(desc.digest)
            if self.store.blobs.has(desc.digest, desc.size):
                self.report.blob("skipping", desc.digest, desc.size, desc.size)
            else:
                self.report.blob("loading", desc.digest, 0, desc.size)


def _verify(digest: str, size: int, pieces: Iterable[bytes | memoryview]) -> None:
    h, n = hashlib.sha256(), 0
    for piece in pieces:
        h.update(piece)
        n += len(piece)
    got = "sha256:" + h.hexdigest()
    if got != digest or n != size:
        raise _corrupt(digest, got)


def _corrupt(digest: str, got: str) -> InvalidModel:
    return InvalidModel(f"blob {digest} in the archive does not match its digest (its bytes hash to {got}): the archive "
                        "is corrupt; nothing was loaded")


def _small(pieces: Iterable[memoryview], member: tar.Member, limit: int) -> bytes:
    if member.size > limit:
        raise InvalidModel(f"the archive's {member.path} is {member.size} bytes, more than the {limit} allowed; nothing was loaded")
    return b"".join(pieces)


def _read_file(path: Path, limit: int) -> bytes:
    try:
        if path.stat().st_size > limit:
            raise InvalidModel(f"{path} is larger than {limit} bytes; not an image layout; nothing was loaded")
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidModel(f"{path.parent} is not an OCI image layout: it has no {path.name}; nothing was loaded") from None
