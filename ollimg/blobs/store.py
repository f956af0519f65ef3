"""The blob directory: atomic, verified writes of content-addressed files.

A blob is written to a unique temp file beside its final place, hashed while it is written,
fsynced, checked against the digest it should have, then renamed. A reader therefore sees a
blob whole or not at all. Temp files are named `.tmp-*` so `prune` can find stale ones.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import re
import uuid
from pathlib import Path

from ollimg.errors import DigestMismatch, NoSpace, StoreError

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
CHUNK = 8 * 1024 * 1024


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise StoreError(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _syncfs(path: Path) -> bool:
    """syncfs(2) on the filesystem holding `path`; False where it does not exist (not Linux)."""
    syncfs = getattr(_libc(), "syncfs", None)
    if syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)
    return True


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def no_space(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


class BlobWriter:
    """Writes one blob: `write()` pieces, then `commit()` (verifies, renames) or `abort()`."""

    def __init__(self, store: "BlobStore", expected: str | None = None, expected_size: int | None = None):
        self.store = store
        self.expected = check_digest(expected) if expected else None
        self.expected_size = expected_size
        self.hash = hashlib.sha256()
        self.size = 0
        self.tmp = store.root / f".tmp-{uuid.uuid4().hex}"
        store.root.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp, "wb")

    def write(self, data: bytes | memoryview) -> None:
        self.hash.update(data)
        try:
            self._file.write(data)
        except OSError as e:
            self.abort()
            if no_space(e):
                raise NoSpace(f"no space left on the device while writing to {self.store.root}; free some space and retry") from None
            raise StoreError(f"cannot write blob: {e}") from None
        self.size += len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()

    def commit(self, sync: bool = True) -> str:
        """Make the blob visible under its digest; returns the digest.

        With `sync=False` the verified blob stays in its temp file, not yet fsynced:
        `BlobStore.land()` then makes a batch of such writers durable and visible with one round
        of fsyncs (the first fsync commits the journal for all of them), which is much cheaper
        than one fsync + rename + directory fsync per small blob.
        """
        try:
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
            self._file.close()
        except OSError as e:
            self.abort()
            if no_space(e):
                raise NoSpace(f"no space left on the device while writing to {self.store.root}; free some space and retry") from None
            raise StoreError(f"cannot write blob: {e}") from None
        digest = self.digest
        if self.expected and digest != self.expected:
            self.abort()
            raise DigestMismatch(f"blob digest mismatch: expected {self.expected}, got {digest}")
        if self.expected_size is not None and self.size != self.expected_size:
            self.abort()
            raise DigestMismatch(f"blob {digest} has {self.size} bytes, expected {self.expected_size}")
        if sync:
            self._place()
            fsync_dir(self.store.root)
        return digest

    def _place(self) -> None:
        final = self.store.path(self.digest)
        if final.exists() and final.stat().st_size == self.size:
            self.tmp.unlink(missing_ok=True)
        else:
            os.replace(self.tmp, final)

    def abort(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        return self.root / ("sha256-" + check_digest(digest).split(":", 1)[1])

    def has(self, digest: str, size: int | None = None) -> bool:
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def writer(self, expected: str | None = None, expected_size: int | None = None) -> BlobWriter:
        return BlobWriter(self, expected, expected_size)

    def partial_path(self, digest: str) -> Path:
        """The stable temp file a resumable download of `digest` fills; a later run continues it."""
        return self.root / (".tmp-partial-sha256-" + check_digest(digest).split(":", 1)[1])

    def land(self, writers: list[BlobWriter]) -> None:
        """Make blobs committed with `sync=False` durable, then visible (rename each).

        On Linux one syncfs() flushes them all at once; elsewhere each is fsynced.
        """
        try:
            if not _syncfs(self.root):
                for writer in writers:
                    fd = os.open(writer.tmp, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        except OSError as e:
            raise StoreError(f"cannot write blob: {e}") from None
        for writer in writers:
            writer._place()
        fsync_dir(self.root)

    def adopt(self, path: Path, expected: str, expected_size: int) -> str:
        """Verify a fully written temp file (hash and size), fsync it and rename it into place.

        A mismatch deletes the file and raises DigestMismatch.
        """
        path = Path(path)
        h = hashlib.sha256()
        size = 0
        try:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                os.fsync(f.fileno())
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e}") from None
        digest = "sha256:" + h.hexdigest()
        if digest != check_digest(expected) or size != expected_size:
            path.unlink(missing_ok=True)
            raise DigestMismatch(f"blob digest mismatch: expected {expected} ({expected_size} bytes), got {digest} ({size} bytes)")
        os.replace(path, self.path(digest))
        fsync_dir(self.root)
        return digest

    def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        with self.writer(expected) as w:
            w.write(data)
            return w.commit()

    def read_bytes(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is missing from the store; run: ollimg verify") from None

    def digests(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted("sha256:" + p.name[7:] for p in self.root.iterdir() if p.name.startswith("sha256-") and len(p.name) == 71)

    def temp_files(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.name.startswith(".tmp-")]

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def hash_file(self, digest: str) -> str:
        h = hashlib.sha256()
        with open(self.path(digest), "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return "sha256:" + h.hexdigest()
