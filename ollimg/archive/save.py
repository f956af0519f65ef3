"""`save`: stored models as the tar of an OCI image layout, streamed, optionally zstd-compressed.

Order in the tar: `oci-layout`, `index.json`, the manifests, then every blob once (config and
layers, in the order the manifests name them), so a loader knows what is coming from the
first kilobytes. Nothing is staged: blobs are read from the store straight into the stream, so
memory stays at a few chunks whatever the model size. Blobs are not re-hashed here (`ollimg
verify` does that; `load` verifies every byte it receives). Must not import httpx or fastapi.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

import zstandard

from ollimg.archive import layout, tar
from ollimg.errors import InvalidInput, StoreError
from ollimg.manifest import Descriptor, Model, Name, Store
from ollimg.progress import OnProgress, Reporter

CHUNK = 4 << 20  # blob bytes per read, and the size small members are batched up to
DEFAULT_LEVEL = 3  # zstd's own default
FEED = 1 << 20  # bytes handed to the compressor at once


@dataclass
class Saved:
    models: list[str]  # display names
    blobs: int
    size: int  # bytes of the tar
    written: int  # bytes written (the compressed size when compressed)


class Archive:
    """The tar of `names`' image layout: its exact `size`, then its bytes from `chunks()`.

    Every name is looked up, and every blob checked present and whole, before a byte is made.
    """

    def __init__(self, store: Store, names: list[Name]):
        if not names:
            raise InvalidInput("name at least one model to save")
        self.store = store
        self.models: list[Model] = [store.get(n) for n in dict.fromkeys(names)]  # a pinned digest is checked here
        blobs: dict[str, Descriptor] = {}
        for model in self.models:
            for desc in model.manifest.blobs():
                if not store.blobs.has(desc.digest, desc.size):
                    raise StoreError(f"blob {desc.digest} of {model.name.display()} is missing or incomplete; run: ollimg verify")
                blobs.setdefault(desc.digest, desc)
        manifests = {m.digest: m.raw for m in self.models}
        self.blobs = [d for d in blobs.values() if d.digest not in manifests]
        self.files: list[tuple[str, bytes]] = [
            (layout.LAYOUT_FILE, layout.LAYOUT), (layout.INDEX_FILE, layout.index_json(self.models)),
            *((layout.blob_path(digest), raw) for digest, raw in manifests.items()),
        ]
        self.size = (
            tar.member_size("blobs/", 0, tar.DIRECTORY) + tar.member_size(layout.BLOB_DIR + "/", 0, tar.DIRECTORY)
            + sum(tar.member_size(path, len(data)) for path, data in self.files)
            + sum(tar.member_size(layout.blob_path(d.digest), d.size) for d in self.blobs) + len(tar.END)
        )

    def chunks(self, on_progress: OnProgress | None = None) -> Iterator[bytes]:
        """The tar, in pieces of about CHUNK bytes. Progress: `saving <12hex>` per blob (bytes of total)."""
        report = Reporter(on_progress)
        for desc in self.blobs:
            report.blob("saving", desc.digest, 0, desc.size)
        batch = bytearray()
        with self.store.lock():  # shared: rm and prune wait until the last blob is read
            batch += tar.header("blobs/", 0, tar.DIRECTORY) + tar.header(layout.BLOB_DIR + "/", 0, tar.DIRECTORY)
            for path, data in self.files:
                batch += tar.header(path, len(data)) + data + tar.padding(len(data))
            for desc in self.blobs:
                batch += tar.header(layout.blob_path(desc.digest), desc.size)
                for piece in self._read(desc, report):
                    if len(batch) + len(piece) > CHUNK and batch:
                        yield bytes(batch)
                        batch.clear()
                    if len(piece) >= CHUNK:
                        yield piece
                    else:
                        batch += piece
                batch += tar.padding(desc.size)
            batch += tar.END
            yield bytes(batch)

    def _read(self, desc: Descriptor, report: Reporter) -> Iterator[bytes]:
        path = self.store.blobs.path(desc.digest)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise StoreError(f"blob {desc.digest} went missing from the store while saving; run: ollimg verify") from None
        with f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            done = 0
            while done < desc.size:
                piece = f.read(min(CHUNK, desc.size - done))
                if not piece:
                    raise StoreError(f"blob {desc.digest} is shorter than its {desc.size} bytes; run: ollimg verify")
                done += len(piece)
                yield piece
                report.blob("saving", desc.digest, done, desc.size)


def compress(chunks: Iterable[bytes], level: int = DEFAULT_LEVEL, threads: int = 0) -> Iterator[bytes]:
    """zstd of the concatenated chunks, one frame with a content checksum, on `threads` worker
    threads (0: one per CPU, as `zstd -T0`).

    Fed in FEED pieces through a stream writer, which hands out the compressed bytes as soon as
    the workers finish them: zstd then holds only its few jobs in flight (tens of MB at most,
    whatever the input size; `zstd -T0` holds the same). A compressobj would keep every finished
    job until the final flush.
    """
    if not 1 <= level <= 22:
        raise InvalidInput(f"zstd level {level} is out of range: use 1 to 19 (up to 22 uses much more memory)")
    cctx = zstandard.ZstdCompressor(level=level, threads=-1 if threads == 0 else threads, write_checksum=True)
    out = _Collect()
    writer = cctx.stream_writer(out, write_size=FEED, closefd=False)
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), FEED):
            writer.write(view[start : start + FEED])
            yield from out.take()
    writer.flush(zstandard.FLUSH_FRAME)
    yield from out.take()


class _Collect:
    """What a zstd stream writer writes, until taken."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> list[bytes]:
        parts, self.parts = self.parts, []
        return parts


def save(store: Store, names: list[Name | str], out: BinaryIO, *, level: int | None = DEFAULT_LEVEL, threads: int = 0,
         on_progress: OnProgress | None = None) -> Saved:
    """Write the layout of `names` to `out`: zstd-compressed at `level`, or a plain tar when None."""
    archive = Archive(store, [n if isinstance(n, Name) else Name.parse(n) for n in names])
    chunks = archive.chunks(on_progress)
    if level is not None:
        chunks = compress(chunks, level, threads)
    written = 0
    for chunk in chunks:
        out.write(chunk)
        written += len(chunk)
    out.flush()
    return Saved([m.name.display() for m in archive.models], len(archive.blobs), archive.size, written)
