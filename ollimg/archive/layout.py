"""The OCI image layout: `oci-layout`, `index.json` and `blobs/sha256/<hex>`, as files and as tar paths.

https://github.com/opencontainers/image-spec/blob/main/image-layout.md. Each model is one entry of
index.json: its manifest's descriptor, named by `org.opencontainers.image.ref.name` (we write the
full name, `host/namespace/model:tag`; the spec's grammar allows it, and skopeo's
`oci:DIR:REF` takes it as REF). Imports errors and the manifest layer only.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Iterator

from ollimg.archive import tar
from ollimg.errors import InvalidModel, InvalidName
from ollimg.manifest import Descriptor, Model, Name
from ollimg.manifest.manifest import DOCKER_MANIFEST_TYPE, MANIFEST_TYPE, MAX_MANIFEST_BYTES

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOB_DIR = "blobs/sha256"
LAYOUT = json.dumps({"imageLayoutVersion": "1.0.0"}, separators=(",", ":")).encode()
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"  # docker and containerd put the full name here, the tag in REF_NAME
MAX_INDEX = 16 << 20
MAX_LAYOUT = 64 << 10
_HEX = re.compile(r"[0-9a-f]{64}")


def blob_path(digest: str) -> str:
    return f"{BLOB_DIR}/{digest.split(':', 1)[1]}"


def index_json(models: list[Model]) -> bytes:
    """index.json naming each model's manifest."""
    manifests = [
        {"mediaType": m.manifest.media_type, "digest": m.digest, "size": len(m.raw),
         "annotations": {REF_NAME: str(m.name.with_tag(m.name.tag))}}  # the name without a pinned digest
        for m in models
    ]
    body = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": manifests}
    return json.dumps(body, separators=(",", ":")).encode()


def classify(path: str) -> tuple[str, str | None]:
    """What a path inside the layout is: ("layout" | "index" | "blob" | "other", digest of a blob).

    A path that leaves the layout (absolute, or through `..`) is refused.
    """
    clean = path
    while clean.startswith("./"):
        clean = clean[2:]
    clean = clean.rstrip("/")
    if path.startswith("/") or "\\" in path or ".." in clean.split("/") or "\0" in path:
        raise InvalidModel(f"the archive holds {path!r}, a path outside the image layout; nothing was loaded")
    clean = posixpath.normpath(clean) if clean else "."
    if clean == LAYOUT_FILE:
        return "layout", None
    if clean == INDEX_FILE:
        return "index", None
    if clean.startswith("blobs/") and clean.count("/") == 2:
        _, algorithm, hexd = clean.split("/")
        if algorithm != "sha256":
            raise InvalidModel(f"the archive holds {path!r}: only sha256 blobs are supported; nothing was loaded")
        if not _HEX.fullmatch(hexd):
            raise InvalidModel(f"the archive holds {path!r}, which is not a blob name (64 lowercase hex digits); nothing was loaded")
        return "blob", f"sha256:{hexd}"
    return "other", None


def check_layout(raw: bytes) -> None:
    try:
        version = json.loads(raw).get("imageLayoutVersion")
    except (ValueError, AttributeError):
        version = None
    if not isinstance(version, str):
        raise InvalidModel("the archive's oci-layout file is not valid (no imageLayoutVersion); nothing was loaded")


def parse_index(raw: bytes) -> list[tuple[Name, Descriptor]]:
    """The models index.json names: (name, manifest descriptor), in order, each name once."""
    try:
        body = json.loads(raw)
        entries = body["manifests"]
        descs = [Descriptor.model_validate(e) for e in entries]
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidModel(f"the archive's index.json is not an OCI image index ({str(e).splitlines()[0]}); nothing was loaded") from None
    found: dict[Name, Descriptor] = {}
    for desc in descs:
        if desc.media_type not in (MANIFEST_TYPE, DOCKER_MANIFEST_TYPE):
            raise InvalidModel(f"index.json names {desc.digest} of type {desc.media_type!r}, not an image manifest; "
                               "only ollimg models can be loaded; nothing was loaded")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", desc.digest) or not 0 < desc.size <= MAX_MANIFEST_BYTES:
            raise InvalidModel(f"index.json holds an invalid manifest descriptor ({desc.digest}, {desc.size} bytes); nothing was loaded")
        annotations = desc.annotations or {}
        ref = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
        if not ref:
            raise InvalidModel(f"index.json names manifest {desc.digest} without a {REF_NAME} annotation, so it has no "
                               "model name; nothing was loaded")
        try:
            name = Name.parse(ref)
        except InvalidName as e:
            raise InvalidModel(f"index.json names a model {ref!r}: {e}; nothing was loaded") from None
        if name.digest:
            name = name.with_tag(name.tag)
        if name in found and found[name].digest != desc.digest:
            raise InvalidModel(f"index.json gives the name {name.display()} to two different manifests; nothing was loaded")
        found[name] = desc
    if not found:
        raise InvalidModel("the archive's index.json names no model; nothing was loaded")
    return list(found.items())


class DirectoryTar:
    """A layout directory's files (oci-layout, index.json, blobs/sha256/*) as a tar stream of a
    known size: how a directory travels to a server's `load`."""

    def __init__(self, root: Path):
        names = [LAYOUT_FILE, INDEX_FILE]
        blob_dir = root / BLOB_DIR
        if blob_dir.is_dir():
            names += sorted(f"{BLOB_DIR}/{p.name}" for p in blob_dir.iterdir() if _HEX.fullmatch(p.name) and p.is_file())
        self.root = root
        self.files = [(name, (root / name).stat().st_size) for name in names if (root / name).is_file()]
        self.size = sum(tar.member_size(name, size) for name, size in self.files) + len(tar.END)

    def chunks(self, piece: int = 4 << 20) -> Iterator[bytes]:
        for name, size in self.files:
            yield tar.header(name, size)
            with open(self.root / name, "rb") as f:
                done = 0
                while data := f.read(min(piece, size - done)):
                    done += len(data)
                    yield data
                if done != size or f.read(1):
                    raise InvalidModel(f"{self.root / name} changed while it was being sent; nothing was loaded")
            yield tar.padding(size)
        yield tar.END
