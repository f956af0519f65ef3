"""OCI image manifests for models: one layer per tensor and per file, plus a config blob.

We write only standard descriptor fields (mediaType, digest, size, annotations); we also read the
older ollama form that put `name`, `dtype` and `shape` on the descriptor itself.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ollimg.errors import StoreError

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.ollimg.model.config.v1+json"
TENSOR_TYPE = "application/vnd.ollimg.tensor.v1"
FILE_TYPE = "application/vnd.ollimg.file.v1"
LEGACY_TENSOR_TYPE = "application/vnd.ollama.image.tensor"
LEGACY_FILE_TYPE = "application/vnd.ollama.image.json"
TENSOR_TYPES = {TENSOR_TYPE, LEGACY_TENSOR_TYPE}

TITLE = "org.opencontainers.image.title"
DTYPE = "io.ollimg.tensor.dtype"
SHAPE = "io.ollimg.tensor.shape"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


class Descriptor(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    media_type: str = Field(alias="mediaType")
    digest: str
    size: int
    annotations: dict[str, str] | None = None

    @property
    def title(self) -> str:
        return (self.annotations or {}).get(TITLE) or (self.model_extra or {}).get("name") or ""

    @property
    def dtype(self) -> str | None:
        return (self.annotations or {}).get(DTYPE) or (self.model_extra or {}).get("dtype")

    @property
    def shape(self) -> tuple[int, ...] | None:
        value = (self.annotations or {}).get(SHAPE)
        if value is None:
            value = (self.model_extra or {}).get("shape")
        if value is None:
            return None
        if isinstance(value, str):
            return tuple(int(d) for d in value.split(",") if d != "")
        return tuple(int(d) for d in value)

    @property
    def is_tensor(self) -> bool:
        return self.media_type in TENSOR_TYPES

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def tensor_layer(title: str, digest: str, size: int, dtype: str, shape: tuple[int, ...]) -> Descriptor:
    return Descriptor(
        mediaType=TENSOR_TYPE, digest=digest, size=size,
        annotations={TITLE: title, DTYPE: dtype, SHAPE: ",".join(str(d) for d in shape)},
    )


def file_layer(title: str, digest: str, size: int) -> Descriptor:
    return Descriptor(mediaType=FILE_TYPE, digest=digest, size=size, annotations={TITLE: title})


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_version: int = Field(2, alias="schemaVersion")
    media_type: str = Field(MANIFEST_TYPE, alias="mediaType")
    config: Descriptor
    layers: list[Descriptor]

    @classmethod
    def parse(cls, raw: bytes) -> "Manifest":
        try:
            manifest = cls.model_validate(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as e:
            raise StoreError(f"invalid manifest: {str(e).splitlines()[0]}") from None
        if manifest.schema_version != 2:
            raise StoreError(f"unsupported manifest schemaVersion {manifest.schema_version}")
        for desc in manifest.blobs():
            if desc.size < 0:
                raise StoreError(f"invalid manifest: blob {desc.digest} has a negative size")
            title = desc.title
            if title and (title.startswith("/") or "\\" in title or any(p in ("", ".", "..") for p in title.split("/"))):
                raise StoreError(f"invalid manifest: layer title {title[:100]!r} is not a relative path inside the model")
        return manifest

    def dump(self) -> bytes:
        """Serialised bytes; stored and pushed byte-exact, never re-serialised after."""
        body = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        raw = json.dumps(body, separators=(",", ":")).encode()
        if len(raw) > MAX_MANIFEST_BYTES:
            raise StoreError(f"manifest is {len(raw)} bytes, more than the 4 MiB registries accept")
        return raw

    def blobs(self) -> list[Descriptor]:
        """Config first, then every layer."""
        return [self.config, *self.layers]

    def tensor_layers(self) -> list[Descriptor]:
        return [layer for layer in self.layers if layer.is_tensor]

    def file_layers(self) -> list[Descriptor]:
        return [layer for layer in self.layers if not layer.is_tensor]

    @property
    def size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)
