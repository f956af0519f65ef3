"""`pull`: a model from an OCI registry into the store, verified, resumable, manifest last.

The manifest is fetched first (byte-exact, checked against the digest when pinned), then every
blob the store lacks, many at once. Small blobs stream through a BlobWriter (hashed while
written, renamed when verified). Large blobs are fetched in parallel byte ranges into a stable
`.tmp-partial-sha256-<hex>` file that a later pull continues, then hashed whole and renamed.
The manifest is written last, so a model appears only when every blob is in place.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
from functools import partial

import httpx

from ollimg import config, models
from ollimg.blobs.store import BlobWriter, check_digest
from ollimg.errors import Cancelled, DigestMismatch, InvalidModel, ModelNotFound, NoSpace, RegistryError, StoreError
from ollimg.manifest import Descriptor, Manifest, Model, Name, Store
from ollimg.manifest.manifest import MAX_MANIFEST_BYTES
from ollimg.progress import OnProgress, Reporter
from ollimg.registry.client import MANIFEST_ACCEPT, HttpxBody, Registry, check, retrying
from ollimg.registry.direct import Body
from ollimg.registry.parallel import run_all

log = logging.getLogger(__name__)

LARGE = 64 << 20  # blobs this big come in parallel byte ranges and survive an interrupted pull
PART_MIN = 16 << 20
SAVE_EVERY = 1 << 20  # bytes of a large blob between two saves of its resume record
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}


def pull(store: Store, name: Name | str, *, insecure: bool | None = None, concurrency: int | None = None,
         on_progress: OnProgress | None = None) -> Model:
    """Pull `name` into `store` and return the stored model.

    Progress statuses: `pulling manifest`; per blob `pulling <12hex>` (bytes done of total; a
    resumed blob starts above 0) or `skipping <12hex>` (already in the store); then
    `verifying sha256 digest`, `writing manifest`, `success`. `on_progress` may raise to stop.
    """
    name = name if isinstance(name, Name) else Name.parse(name)
    try:
        return _pull(store, name, insecure, concurrency or config.registry_concurrency(), Reporter(on_progress))
    finally:
        # What interrupted writers left goes now, if no other writer runs (models.remove_stale_temp_files
        # says which files); this pull's own partial downloads stay for the next one to resume.
        models.remove_stale_temp_files(store)


def _pull(store: Store, name: Name, insecure: bool | None, workers: int, report: Reporter) -> Model:
    with Registry(name.host, insecure=insecure, connections=workers) as registry, store.lock():
        report.status("pulling manifest")
        raw = fetch_manifest(registry, name)
        manifest = Manifest.parse(raw)
        missing = []
        for desc in {d.digest: d for d in manifest.blobs()}.values():
            check_digest(desc.digest)
            if store.blobs.has(desc.digest, desc.size):
                report.blob("skipping", desc.digest, desc.size, desc.size)
            else:
                missing.append(desc)
        Download(store, registry, name, report, workers).run(missing)
        report.status("verifying sha256 digest")
        report.status("writing manifest")
        model = store.put_manifest(name, raw)
        report.status("success")
    return model


def fetch_manifest(registry: Registry, name: Name) -> bytes:
    """The manifest bytes exactly as the registry stores them, verified when the name pins a digest."""
    url = registry.url(name.repository, "manifests", name.reference)

    def get() -> tuple[bytes, httpx.Headers]:
        response = registry.send("GET", url, headers={"Accept": MANIFEST_ACCEPT}, stream=True)
        try:
            if response.status_code == 404:
                raise ModelNotFound(f'model "{name.display()}" not found in registry {name.host}')
            check(response, f"pull manifest of {name.display()}")
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    raise InvalidModel(f"the manifest of {name.display()} is larger than 4 MiB; not an ollimg model")
            return body, response.headers
        finally:
            response.close()

    raw, headers = retrying(get, f"registry {name.host}")
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    for expected in (name.digest, headers.get("docker-content-digest")):
        if expected and expected.startswith("sha256:") and expected != digest:
            raise DigestMismatch(f"the manifest of {name.display()} has digest {digest}, expected {expected}; nothing was saved")
    media_type = headers.get("content-type", "").split(";")[0].strip()
    if media_type in INDEX_TYPES:
        raise InvalidModel(f"{name.display()} is an image index (several manifests), not an ollimg model")
    return raw


class Download:
    """The blobs one pull still needs, fetched on `workers` threads."""

    def __init__(self, store: Store, registry: Registry, name: Name, report: Reporter, workers: int):
        self.store, self.registry, self.name, self.report, self.workers = store, registry, name, report, workers
        self.stop = threading.Event()
        self._verified: list[BlobWriter] = []  # verified, not yet landed
        self._verified_lock = threading.Lock()

    def run(self, descs: list[Descriptor]) -> None:
        large = []
        jobs = []
        self.check_room(descs)
        try:
            # Largest first, so the long transfers start early and the small ones fill the gaps.
            for desc in sorted(descs, key=lambda d: -d.size):
                if desc.size >= LARGE:
                    self.confirm_size(desc)
                    blob = LargeBlob(self, desc)
                    large.append(blob)
                    jobs += blob.jobs()
                else:
                    self.report.blob("pulling", desc.digest, 0, desc.size)
                    jobs.append(partial(self.fetch_small, desc))
            run_all(jobs, self.workers, self.stop, tick=self.land)
        finally:
            for blob in large:
                blob.close()
            self.land()  # verified blobs land even when the pull fails: a retry skips them

    def url(self, digest: str) -> str:
        return self.registry.url(self.name.repository, "blobs", digest)

    def check_room(self, descs: list[Descriptor]) -> None:
        """The declared sizes are only claims: before a byte is written they must fit the disk."""
        need = sum(d.size for d in descs)
        free = shutil.disk_usage(self.store.root if self.store.root.exists() else self.store.root.parent).free
        if need > free:
            raise NoSpace(f"{self.name.display()} needs {need / 1e9:.1f} GB more in the store, {free / 1e9:.1f} GB are "
                          "free; free some space (ollimg prune, ollimg rm) and retry")

    def confirm_size(self, desc: Descriptor) -> None:
        """A large blob's size as the registry serves it (HEAD) must be the manifest's, before a
        partial file of that size is made: a manifest that lies about sizes leaves nothing behind."""
        def head() -> int | None:
            response = check(self.registry.send("HEAD", self.url(desc.digest)), f"pull blob {desc.digest}")
            response.close()
            length = response.headers.get("content-length", "")
            return int(length) if length.isdigit() else None

        served = retrying(head, f"registry {self.name.host}", self.stop)
        if served is not None and served != desc.size:
            raise self.mismatch(desc, DigestMismatch(f"the manifest says {desc.size} bytes, the registry serves {served}"))

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Cancelled("pull stopped")

    def mismatch(self, desc: Descriptor, error: DigestMismatch) -> DigestMismatch:
        return DigestMismatch(
            f"blob {desc.digest} of {self.name.display()} from registry {self.name.host} failed verification "
            f"({error}); it was discarded and the model was not saved"
        )

    def fetch_small(self, desc: Descriptor) -> None:
        writer = retrying(partial(self._fetch_small, desc), f"registry {self.name.host}", self.stop)
        self.report.blob("pulling", desc.digest, desc.size, desc.size)
        with self._verified_lock:
            self._verified.append(writer)

    def land(self) -> None:
        """Makes the verified small blobs durable and visible, in one batch.

        Called by the waiting thread every half second and at the end, so the transfer threads
        never wait for the disk, an interrupted pull keeps what it fetched, and the fsyncs of a
        batch come together (one syncfs on Linux) instead of one fsync + rename per blob.
        """
        with self._verified_lock:
            batch, self._verified = self._verified, []
        if batch:
            self.store.blobs.land(batch)

    def _fetch_small(self, desc: Descriptor) -> BlobWriter:
        """The blob, verified, in a temp file not yet synced (see `land`)."""
        self.check_stop()
        with self.store.blobs.writer(desc.digest, desc.size) as writer:
            with self.registry.get_blob(self.url(desc.digest), f"pull blob {desc.digest}") as body:
                for chunk in body.chunks():
                    if writer.size + len(chunk) > desc.size:
                        raise self.mismatch(desc, DigestMismatch(f"more than the {desc.size} bytes the manifest gives"))
                    writer.write(chunk)
                    if writer.size < desc.size:
                        self.report.blob("pulling", desc.digest, writer.size, desc.size)
                    self.check_stop()
            try:
                writer.commit(sync=False)
            except DigestMismatch as e:
                raise self.mismatch(desc, e) from None
            return writer


class LargeBlob:
    """One large blob, fetched in parallel byte ranges into `.tmp-partial-sha256-<hex>`.

    `<partial>.json` records how many bytes of each part have landed, so a later pull asks only
    for the rest (`Range: bytes=N-M`). The sha256 follows the bytes as they land: whichever thread
    extends the run of landed bytes from the start hashes it (read back from the page cache), so
    when the last part ends only the tail is left to hash. The hash over the whole file is what
    makes the blob trusted: the record only saves work, and a resumed blob that fails verification
    is fetched once more from scratch. An flock on the partial file keeps two pulls from filling it
    at once.
    """

    def __init__(self, download: Download, desc: Descriptor):
        self.download, self.desc = download, desc
        self.path = download.store.blobs.partial_path(desc.digest)
        self.record = self.path.with_name(self.path.name + ".json")
        self.lock = threading.Lock()
        self.ranged = True  # False once the server ignored a Range and one part takes the whole body
        self.owner: int | None = None
        self.saved = 0
        self.whole_pos = 0  # bytes landed from the start when one part takes the whole body
        self.hasher = hashlib.sha256()
        self.hashed = 0  # bytes from the start fed to `hasher`
        self.hashing = False  # one thread at a time feeds the hasher
        self.fd = self._open()
        if self.fd is None:
            self.parts: list[list[int]] = []
            return
        self.parts = self._load() or self._split(download.workers)
        self.resumed = any(done for _, _, done in self.parts)
        os.ftruncate(self.fd, desc.size)
        self.remaining = len(self.parts)

    def _open(self) -> int | None:
        """The partial file, locked; None when another pull finished the blob meanwhile."""
        blobs = self.download.store.blobs
        while not blobs.has(self.desc.digest, self.desc.size):
            fd = blobs.create_file(self.path, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another process fills this blob
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # the other process renamed it into place: look again
        return None

    def _split(self, workers: int) -> list[list[int]]:
        size = self.desc.size
        n = max(1, min(workers, size // PART_MIN))
        return [[i * size // n, (i + 1) * size // n, 0] for i in range(n)]

    def _load(self) -> list[list[int]] | None:
        try:
            data = json.loads(self.record.read_text())
            parts = [[int(a), int(b), int(c)] for a, b, c in data["parts"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if data.get("size") != self.desc.size or not parts or parts[0][0] != 0 or parts[-1][1] != self.desc.size:
            return None
        if any(not 0 <= done <= end - start for start, end, done in parts):
            return None
        log.info("resuming %s: %d of %d bytes already here", self.desc.digest, sum(p[2] for p in parts), self.desc.size)
        return parts

    def _save(self) -> None:
        """Replaces the record whole (written aside, then renamed): a pull killed while saving leaves
        the last record, never an empty one. One writer: the partial file's flock, then self.lock."""
        fresh = self.record.with_name(self.record.name + ".new")  # a partial's temp file: prune knows it
        try:
            fresh.write_text(json.dumps({"size": self.desc.size, "parts": self.parts}))
            os.replace(fresh, self.record)
        except OSError as e:
            log.warning("cannot save the resume record %s: %s", self.record, e)

    def jobs(self) -> list:
        if self.fd is None:
            self.download.report.blob("skipping", self.desc.digest, self.desc.size, self.desc.size)
            return []
        self.download.report.blob("pulling", self.desc.digest, self.done(), self.desc.size)
        return [partial(self.fetch_part, i) for i in range(len(self.parts))]

    def done(self) -> int:
        return sum(done for _, _, done in self.parts)

    def fetch_part(self, i: int) -> None:
        retrying(partial(self._fetch_part, i), f"registry {self.download.name.host}", self.download.stop)
        with self.lock:
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            self.finish()

    def _fetch_part(self, i: int) -> None:
        self.download.check_stop()
        start, end, done = self.parts[i]
        whole = not self.ranged
        if (whole and self.owner != i) or (not whole and done >= end - start):
            return
        headers = {} if whole else {"Range": f"bytes={start + done}-{end - 1}"}
        with self.download.registry.get_blob(self.download.url(self.desc.digest), f"pull blob {self.desc.digest}", headers) as body:
            if body.status_code == 200:
                with self.lock:
                    if self.owner not in (None, i):
                        return  # another part already takes the whole body
                    self.ranged, self.owner = False, i
                self._write(body, 0, self.desc.size, None)
                for part in self.parts:
                    part[2] = part[1] - part[0]
            elif body.status_code == 206 and _range_start(body.headers) == start + done:
                self._write(body, start + done, end, i)
            else:
                raise RegistryError(f"registry {self.download.name.host} answered a range request for {self.desc.digest} with a wrong range")

    def _write(self, body: Body | HttpxBody, pos: int, end: int, part: int | None) -> None:
        """Writes the body from `pos` up to `end`; `part` None means the whole blob, ranges ignored."""
        for chunk in body.chunks():
            if part is not None and not self.ranged:
                return  # the whole body is coming through another part
            view = memoryview(chunk)[: end - pos]
            while view:
                written = os.pwrite(self.fd, view, pos)
                view, pos = view[written:], pos + written
            self.advance(part, pos)
            if pos >= end:
                break
            self.download.check_stop()
        if pos < end:
            raise httpx.RemoteProtocolError(f"the body of {self.desc.digest} ended early")

    def advance(self, part: int | None, pos: int) -> None:
        with self.lock:
            if part is not None:
                self.parts[part][2] = pos - self.parts[part][0]
                completed = self.done()
            else:
                completed = self.whole_pos = pos
            if completed - self.saved >= SAVE_EVERY and part is not None:
                self.saved = completed
                self._save()
        self.download.report.blob("pulling", self.desc.digest, completed, self.desc.size)
        self.hash_landed()

    def _landed(self) -> int:
        """How many bytes from the start have landed without a gap (call under the lock)."""
        for start, end, done in self.parts:
            if done < end - start:
                return max(start + done, self.whole_pos)
        return self.desc.size

    def hash_landed(self) -> None:
        """Feeds the hasher the bytes that landed since; returns at once if another thread does it."""
        with self.lock:
            if self.hashing or self._landed() <= self.hashed:
                return
            self.hashing = True
        try:
            while True:
                with self.lock:
                    end = self._landed()
                    if end <= self.hashed:
                        self.hashing = False
                        return
                while self.hashed < end:
                    data = os.pread(self.fd, min(end - self.hashed, 8 << 20), self.hashed)
                    if not data:
                        raise StoreError(f"{self.path} is shorter than the bytes recorded as landed")
                    self.hasher.update(data)
                    self.hashed += len(data)
        except BaseException:
            with self.lock:
                self.hashing = False
            raise

    def finish(self) -> None:
        blobs = self.download.store.blobs
        try:
            self.hash_landed()
            if self.hashed != self.desc.size:  # cannot happen: every part has ended, the hasher caught up
                raise StoreError(f"{self.desc.digest}: hashed {self.hashed} of {self.desc.size} bytes")
            blobs.adopt(self.path, self.desc.digest, self.desc.size, hashed=self.hasher)
        except DigestMismatch as e:
            if not self.resumed:
                raise self.download.mismatch(self.desc, e) from None
            log.warning("resumed blob %s failed verification; fetching it again from scratch", self.desc.digest)
            self.close()
            self.fd = self._open()
            if self.fd is not None:
                self.resumed, self.ranged, self.owner = False, False, 0
                self.parts = [[0, self.desc.size, 0]]
                self.whole_pos, self.hashed, self.hasher = 0, 0, hashlib.sha256()
                os.ftruncate(self.fd, self.desc.size)
                retrying(partial(self._fetch_part, 0), f"registry {self.download.name.host}", self.download.stop)
                self.finish()
            return
        self.record.unlink(missing_ok=True)
        self.download.report.blob("pulling", self.desc.digest, self.desc.size, self.desc.size)

    def close(self) -> None:
        """Keeps the resume record of an unfinished blob and releases the partial file."""
        if self.fd is None:
            return
        if self.path.exists():
            with self.lock:
                self._save()
        else:
            self.record.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def _range_start(headers: httpx.Headers) -> int | None:
    """The first byte of a 206 answer: `Content-Range: bytes 100-199/1000` -> 100."""
    value = headers.get("content-range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None
