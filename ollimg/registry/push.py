"""`push`: a stored model to an OCI registry; blobs the registry has are skipped, manifest last.

Every blob is first checked with HEAD (many at once). A missing blob is mounted from another
repository on the same registry when a local model of that host names it, else uploaded:
POST, then one streamed PUT, or PATCH chunks and a closing PUT for very large blobs. The
manifest bytes go up exactly as stored, after every blob is there.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Iterator

import httpx

from ollimg import config
from ollimg.errors import Cancelled, InvalidName, RegistryError, StoreError
from ollimg.manifest import Descriptor, Name, Store
from ollimg.progress import OnProgress, Reporter
from ollimg.registry.client import Registry, check, resolve, retrying
from ollimg.registry.parallel import run_all


READ = 1 << 20  # upload bodies stream in pieces this big (one big bytes body is 3x slower in httpx)
CHUNKED = 1 << 30  # blobs this big go up in PATCH chunks (some registries and proxies cap one request)
CHUNK = 256 << 20


def push(store: Store, name: Name | str, *, insecure: bool | None = None, concurrency: int | None = None,
         on_progress: OnProgress | None = None) -> None:
    """Push the stored model `name` to its registry.

    Progress statuses: `retrieving manifest`; per blob `skipping <12hex>` (the registry has it),
    `mounting <12hex>` (mounted from another repository there) or `pushing <12hex>` (bytes sent
    of total); then `pushing manifest`, `success`. `on_progress` may raise to stop.
    """
    name = name if isinstance(name, Name) else Name.parse(name)
    if name.digest:
        raise InvalidName(f"push takes a tag, not a digest: ollimg push {name.with_tag(name.tag).display()}")
    workers = concurrency or config.registry_concurrency()
    model = store.get(name)  # not found before the first progress: a server answers 404, not a stream
    report = Reporter(on_progress)
    report.status("retrieving manifest")
    blobs = list({d.digest: d for d in model.manifest.blobs()}.values())
    with Registry(name.host, insecure=insecure, connections=workers) as registry:
        upload = Upload(store, registry, name, report, workers)
        missing = upload.missing(blobs)
        sources = mount_sources(store, name, {d.digest for d in missing})
        jobs = [partial(upload.blob, d, sources.get(d.digest)) for d in sorted(missing, key=lambda d: -d.size)]
        run_all(jobs, workers, upload.stop)
        report.status("pushing manifest")
        upload.manifest(model.raw, model.manifest.media_type, model.digest)
    report.status("success")


def mount_sources(store: Store, name: Name, digests: set[str]) -> dict[str, str]:
    """digest -> another repository on the same host that a local model says holds it."""
    sources: dict[str, str] = {}
    if not digests:
        return sources
    for other in store.models():
        if other.name.host != name.host or other.name.repository == name.repository:
            continue
        for desc in other.manifest.blobs():
            if desc.digest in digests:
                sources.setdefault(desc.digest, other.name.repository)
    return sources


class Upload:
    def __init__(self, store: Store, registry: Registry, name: Name, report: Reporter, workers: int):
        self.store, self.registry, self.name, self.report, self.workers = store, registry, name, report, workers
        self.stop = threading.Event()
        self.what = f"registry {name.host}"

    def missing(self, blobs: list[Descriptor]) -> list[Descriptor]:
        """The blobs the repository lacks (HEAD each, many at once); the others are reported skipped."""
        for desc in blobs:
            if not self.store.blobs.has(desc.digest, desc.size):
                raise StoreError(f"blob {desc.digest} of {self.name.display()} is missing from the store; run: ollimg verify")
        present: set[str] = set()

        def status(desc: Descriptor) -> int:
            response = self.registry.send("HEAD", self.url("blobs", desc.digest))
            if response.status_code not in (200, 404):
                check(response, f"push blob {desc.digest}")
            return response.status_code

        def head(desc: Descriptor) -> None:
            if retrying(partial(status, desc), self.what, self.stop) == 200:
                present.add(desc.digest)
                self.report.blob("skipping", desc.digest, desc.size, desc.size)

        # The first request alone, so a 401 challenge is answered once, not by every thread.
        head(blobs[0])
        run_all([partial(head, d) for d in blobs[1:]], self.workers, self.stop)
        return [d for d in blobs if d.digest not in present]

    def url(self, *parts: str) -> str:
        return self.registry.url(self.name.repository, *parts)

    def blob(self, desc: Descriptor, source: str | None) -> None:
        retrying(partial(self._blob, desc, source), self.what, self.stop)

    def _blob(self, desc: Descriptor, source: str | None) -> None:
        if self.stop.is_set():
            raise Cancelled("push stopped")
        start = self.url("blobs", "uploads/")
        if source:
            response = self.registry.send("POST", httpx.URL(start, params={"mount": desc.digest, "from": source}))
            if response.status_code == 201:
                self.report.blob("mounting", desc.digest, desc.size, desc.size)
                return
        else:
            response = self.registry.send("POST", start)
        location = resolve(check(response, f"push blob {desc.digest}"))
        self.report.blob("pushing", desc.digest, 0, desc.size)
        if desc.size >= CHUNKED:
            location = self._patch_chunks(desc, location)
            body, length = b"", 0
        else:
            body, length = partial(self._read, desc, 0, desc.size), desc.size
        done = location.copy_merge_params({"digest": desc.digest})  # keeps the upload's own query (_state)
        response = self.registry.send("PUT", done, content=body,
                                      headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)})
        check(response, f"push blob {desc.digest}")
        self.report.blob("pushing", desc.digest, desc.size, desc.size)

    def _patch_chunks(self, desc: Descriptor, location: httpx.URL) -> httpx.URL:
        for start in range(0, desc.size, CHUNK):
            end = min(start + CHUNK, desc.size)
            headers = {"Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end - 1}",
                       "Content-Length": str(end - start)}
            response = self.registry.send("PATCH", location, content=partial(self._read, desc, start, end), headers=headers)
            location = resolve(check(response, f"push blob {desc.digest}"))
        return location

    def _read(self, desc: Descriptor, start: int, end: int) -> Iterator[bytes]:
        """Bytes start..end of a stored blob in READ pieces, reporting progress as they go."""
        path = self.store.blobs.path(desc.digest)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise StoreError(f"blob {desc.digest} is missing from the store; run: ollimg verify") from None
        with f:
            f.seek(start)
            pos = start
            while pos < end:
                if self.stop.is_set():
                    raise Cancelled("push stopped")
                chunk = f.read(min(READ, end - pos))
                if not chunk:
                    raise StoreError(f"blob {desc.digest} is shorter than its {desc.size} bytes; run: ollimg verify")
                pos += len(chunk)
                yield chunk
                self.report.blob("pushing", desc.digest, pos, desc.size)

    def manifest(self, raw: bytes, media_type: str, digest: str) -> None:
        url = self.url("manifests", self.name.tag)
        response = retrying(lambda: check(self.registry.send("PUT", url, content=raw, headers={"Content-Type": media_type}),
                                          f"push manifest of {self.name.display()}"), self.what)
        answered = response.headers.get("docker-content-digest")
        if answered and answered != digest:
            raise RegistryError(f"registry {self.name.host} stored the manifest of {self.name.display()} as {answered}, expected {digest}")
