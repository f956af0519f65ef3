"""The blob directory: atomic, verified writes of content-addressed files.

A blob is written to a unique temp file beside its final place, hashed while it is written,
fsynced, checked against the digest it should have, then renamed. A reader therefore sees a
blob whole or not at all. Temp files are named `.tmp-*` so `prune` can find stale ones.

Two ways in, one way to publish (`BlobWriter.commit`):
- `writer()`: the caller writes bytes (a download, a converted tensor); they are hashed as written.
- `put_range()`: a byte range of an existing file (a tensor inside a safetensors shard) behind a
  header. The range is hashed first (through mmap, so no copy), a blob that is already there is
  not written again, and otherwise the kernel copies the range (`copy_file_range`). The source's
  size and mtime are checked after the copy, so a file changed mid-import is an error.
Hashing releases the GIL, so callers run several blobs in threads to use every core; within one
blob, a large piece is hashed on a helper thread while it is written, so the two overlap.
A pending commit (`sync=False`) starts the kernel writing the blob back at once, so the one
syncfs of `land()` finds little left to flush.
Blobs are private to the store's owner: files 0600 in a 0700 directory (`create_file`), since a
model may hold what its owner would not share (a private fine-tune, an imported file).
Must not import httpx, fastapi, rich, torch or mlx.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import mmap
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from ollimg.errors import DigestMismatch, NoSpace, StoreError

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
CHUNK = 8 * 1024 * 1024
OVERLAP = 256 * 1024  # a piece this large is hashed on a helper thread while it is written
_SYNC_FILE_RANGE_WRITE = 2
PARTIAL_PREFIX = ".tmp-partial-sha256-"  # + hex: a resumable download (and `.json`, its record)


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


@functools.cache
def _hashers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="ollimg-hash")


def _start_writeback(fd: int) -> None:
    """Have the kernel start writing the file's dirty pages now, without waiting for them
    (sync_file_range(2), Linux); nothing where it does not exist. Only a head start: durability
    still comes from the fsync or syncfs that follows."""
    call = getattr(_libc(), "sync_file_range", None)
    if call is not None:
        call(fd, ctypes.c_int64(0), ctypes.c_int64(0), ctypes.c_uint(_SYNC_FILE_RANGE_WRITE))


def no_space(e: OSError) -> bool:
    """Out of room: a full disk, a quota, or a file-size limit (RLIMIT_FSIZE gives EFBIG)."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_error(e: OSError, root: Path) -> Exception:
    if no_space(e):
        return NoSpace(f"no space left on the device while writing to {root}; free some space and retry")
    return StoreError(f"cannot write blob in {root}: {e}")


class BlobWriter:
    """Writes one blob: `write()` pieces, then `commit()` (verifies, renames) or `abort()`.

    After `commit()`, `new` says whether this writer added the blob (False: it was already there,
    and the temp file was dropped without being synced).
    """

    def __init__(self, store: "BlobStore", expected: str | None = None, expected_size: int | None = None):
        self.store = store
        self.expected = check_digest(expected) if expected else None
        self.expected_size = expected_size
        self.hash: "hashlib._Hash | None" = hashlib.sha256()
        self.size = 0
        self.new = False
        self.tmp = store.root / f".tmp-{uuid.uuid4().hex}"
        try:
            self._file = os.fdopen(store.create_file(self.tmp), "wb")
        except OSError as e:
            raise write_error(e, store.root) from None

    def write(self, data: bytes | memoryview) -> None:
        hashing = None
        if self.hash is not None:
            if memoryview(data).nbytes >= OVERLAP:
                hashing = _hashers().submit(self.hash.update, data)
            else:
                self.hash.update(data)
        try:
            self._file.write(data)
        except OSError as e:
            self.abort()
            raise write_error(e, self.store.root) from None
        finally:
            if hashing is not None:
                hashing.result()  # the next piece is hashed only after this one: order kept
        self.size += memoryview(data).nbytes

    def copy_range(self, fd: int, offset: int, nbytes: int, on_bytes: Callable[[int], None] | None = None) -> None:
        """Append `nbytes` of file `fd` from `offset`, copied by the kernel and NOT hashed here.

        Only for a writer made with `expected`: the caller hashed exactly these bytes already.
        """
        if self.expected is None:
            raise StoreError("copy_range needs a writer that knows its expected digest")
        self.hash = None
        try:
            self._file.flush()
            _copy(fd, self._file.fileno(), offset, self.size, nbytes, on_bytes)
            self._file.seek(0, os.SEEK_END)
        except OSError as e:
            self.abort()
            raise write_error(e, self.store.root) from None
        self.size += nbytes

    @property
    def digest(self) -> str:
        if self.hash is None:
            return self.expected  # type: ignore[return-value]
        return "sha256:" + self.hash.hexdigest()

    def commit(self, sync: bool = True) -> str:
        """Verify the blob and make it visible under its digest; returns the digest.

        `sync=False` verifies the blob but leaves it pending in its temp file, unsynced:
        `BlobStore.land()` then makes a batch of pending writers durable (one syncfs) and visible,
        which is much cheaper than an fsync per blob (create and pull write thousands). A blob is
        renamed only after its bytes are durable, so a crash never leaves a digest-named file
        with unflushed content, and nothing may name a pending blob before it has landed.
        """
        digest = self.digest
        if self.expected and digest != self.expected:
            self.abort()
            raise DigestMismatch(f"blob digest mismatch: expected {self.expected}, got {digest}")
        if self.expected_size is not None and self.size != self.expected_size:
            self.abort()
            raise DigestMismatch(f"blob {digest} has {self.size} bytes, expected {self.expected_size}")
        if self.store.has(digest, self.size):
            self.abort()  # already stored: the temp file goes without ever being synced
            return digest
        try:
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
            else:
                _start_writeback(self._file.fileno())
            self._file.close()
        except OSError as e:
            self.abort()
            raise write_error(e, self.store.root) from None
        if sync:
            self._place()
            fsync_dir(self.store.root)
        return digest

    def _place(self) -> None:
        """Rename the (durable) temp file into place, unless an equal blob got there first."""
        final = self.store.path(self.digest)
        if self.store.has(self.digest, self.size):
            self.tmp.unlink(missing_ok=True)
            return
        try:
            os.replace(self.tmp, final)
        except OSError as e:
            self.abort()
            raise write_error(e, self.store.root) from None
        self.new = True

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


def _copy(src: int, dst: int, src_offset: int, dst_offset: int, nbytes: int, on_bytes: Callable[[int], None] | None) -> None:
    """Copy a byte range between files in the kernel; read/write where copy_file_range cannot."""
    done = 0
    use_kernel = hasattr(os, "copy_file_range")
    while done < nbytes:
        count = min(CHUNK * 8, nbytes - done)
        n = 0
        if use_kernel:
            try:
                n = os.copy_file_range(src, dst, count, src_offset + done, dst_offset + done)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                use_kernel = False
        if not use_kernel:
            data = os.pread(src, min(count, CHUNK), src_offset + done)
            n = os.pwrite(dst, data, dst_offset + done) if data else 0
        if n == 0:
            raise StoreError(f"source file ended {nbytes - done} bytes early while copying")
        done += n
        if on_bytes:
            on_bytes(n)


def hash_range(fd: int, offset: int, nbytes: int, prefix: bytes = b"", on_bytes: Callable[[int], None] | None = None) -> str:
    """sha256 of `prefix` + `nbytes` of file `fd` from `offset`, read through mmap (no copy)."""
    h = hashlib.sha256(prefix)
    if nbytes:
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
            if offset + nbytes > len(mm):
                raise StoreError(f"source file is shorter than expected ({len(mm)} < {offset + nbytes} bytes)")
            view = memoryview(mm)
            try:
                for start in range(offset, offset + nbytes, CHUNK):
                    end = min(start + CHUNK, offset + nbytes)
                    h.update(view[start:end])
                    if on_bytes:
                        on_bytes(end - start)
            finally:
                view.release()
    return "sha256:" + h.hexdigest()


class _Scaled:
    """Maps two passes over `total` bytes onto `total` progress units: `split` for the first."""

    def __init__(self, callback: Callable[[int], None] | None, total: int, split: int):
        self.callback, self.total, self.split, self.sent = callback, total, split, 0
        self.first_done = self.second_done = 0

    def _send(self, target: int) -> None:
        if self.callback and target > self.sent:
            self.callback(target - self.sent)
            self.sent = target

    def first(self, n: int) -> None:
        self.first_done += n
        self._send(self.first_done * self.split // max(self.total, 1))

    def second(self, n: int) -> None:
        self.second_done += n
        self._send(self.split + self.second_done * (self.total - self.split) // max(self.total, 1))

    def finish(self) -> None:
        self._send(self.total)


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        return self.root / ("sha256-" + check_digest(digest).split(":", 1)[1])

    def create_file(self, path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL) -> int:
        """Opens a new file in the blob directory, readable by the owner only; returns its fd."""
        if not self.root.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
        return os.open(path, flags, 0o600)

    def has(self, digest: str, size: int | None = None) -> bool:
        try:
            st = os.stat(os.path.join(self.root, "sha256-" + check_digest(digest)[7:]))  # no Path: called per blob, often
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def writer(self, expected: str | None = None, expected_size: int | None = None) -> BlobWriter:
        return BlobWriter(self, expected, expected_size)

    def partial_path(self, digest: str) -> Path:
        """The stable temp file a resumable download of `digest` fills; a later run continues it."""
        return self.root / (PARTIAL_PREFIX + check_digest(digest).split(":", 1)[1])

    def land(self, writers: list[BlobWriter]) -> None:
        """Make blobs committed with `sync=False` durable, then visible (rename each).

        On Linux one syncfs() flushes them all at once; elsewhere each is fsynced.
        """
        try:
            if not _syncfs(self.root):
                for writer in (w for w in writers if w.tmp.exists()):
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

    def adopt(self, path: Path, expected: str, expected_size: int, hashed: "hashlib._Hash | None" = None) -> str:
        """Verify a fully written temp file (hash and size), fsync it and rename it into place.

        `hashed`: a sha256 the caller already fed with exactly the file's bytes as they landed
        (a download hashed while it streamed); otherwise the file is read and hashed here.
        A mismatch deletes the file and raises DigestMismatch.
        """
        path = Path(path)
        h = hashed or hashlib.sha256()
        try:
            with open(path, "rb") as f:
                if hashed is None:
                    while chunk := f.read(CHUNK):
                        h.update(chunk)
                size = os.fstat(f.fileno()).st_size
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

    def put_range(
        self, path: Path, offset: int, nbytes: int, header: bytes = b"",
        on_bytes: Callable[[int], None] | None = None,
    ) -> tuple[str, int, BlobWriter | None]:
        """Store `header` + a byte range of `path` as one blob: (digest, size, pending writer).

        The writer is pending (`commit(sync=False)`): `land()` it before naming the blob in a
        manifest. None when the blob was already stored (hashed, not copied).
        `on_bytes` gets progress in bytes of the range, which add up to `nbytes`: the first half
        while hashing, the second half while copying (at once when the blob is already stored).
        """
        hashed = nbytes // 2
        report = _Scaled(on_bytes, nbytes, hashed)
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            digest = hash_range(f.fileno(), offset, nbytes, header, report.first)
            size = len(header) + nbytes
            if self.has(digest, size):
                report.finish()
                return digest, size, None
            with self.writer(digest, size) as w:
                w.write(header)
                w.copy_range(f.fileno(), offset, nbytes, report.second)
                after = os.fstat(f.fileno())
                if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                    raise StoreError(f"{path} changed while it was being imported; retry when it is stable")
                w.commit(sync=False)
                report.finish()
                return digest, size, w

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
        """The sha256 of the blob stored under `digest`, as it is on disk now."""
        with open(self.path(digest), "rb") as f:
            return hash_range(f.fileno(), 0, os.fstat(f.fileno()).st_size)
