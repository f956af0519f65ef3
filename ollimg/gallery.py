"""The gallery: generated images kept with their parameters, newest first, under a size cap.

Layout of the gallery dir (`OLLIMG_GALLERY`, default `<user data dir>/gallery`), per image `ID`:
`ID.<png|jpeg|webp>` (the image as generated), `ID.thumb.jpg` (at most 256 px) and `ID.json` (its
parameters); an edit adds `ID.source.png` (the image it started from, as the runtime got it) and,
with a mask, `ID.mask.png` (greyscale, white = redrawn), so its settings can be used again (an edit
of n images keeps n copies: each entry is whole on its own). Each file is written to a temp file
and renamed; the JSON lands last, so an image is in the gallery only when complete, and files
without their JSON (a crash mid-write) are removed when the gallery is opened. After each add,
the oldest images go until the total is within the cap (`OLLIMG_GALLERY_MAX`; 0 keeps nothing).
IDs sort by creation time.

Imports errors and PIL; knows nothing of HTTP, the scheduler or torch.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ollimg.errors import ImageNotFound, InvalidInput

log = logging.getLogger(__name__)

THUMB_SIZE = 256
ID_PATTERN = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9]{6}-[0-9a-f]{6}")
FORMATS = ("png", "jpeg", "webp")


@dataclass
class Entry:
    """One kept image and what made it."""

    id: str
    created_at: str
    model: str
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    format: str
    bytes: int = 0
    model_digest: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    strength: float | None = None  # an edit's strength (None: made from text alone)
    source_digest: str | None = None  # an edit's: sha256 of the uploaded image (its PNG: ID.source.png)
    mask: bool = False  # an edit with a mask (ID.mask.png)

    @classmethod
    def from_json(cls, data: dict) -> "Entry":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def matches(self, model: str | None, text: str | None) -> bool:
        if model and self.model != model:
            return False
        if text:
            words = text.lower().split()
            haystack = f"{self.prompt}\n{self.negative_prompt or ''}".lower()
            return all(w in haystack for w in words)
        return True


class Gallery:
    """The gallery dir, indexed in memory on first use; safe to call from several threads."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] | None = None  # id -> entry, loaded lazily

    # -- reading -------------------------------------------------------------------------------

    def list(self, *, model: str | None = None, text: str | None = None, before: str | None = None,
             limit: int = 50) -> tuple[list[Entry], int]:
        """Newest first: up to `limit` entries older than id `before` that match; and how many match in all."""
        with self._lock:
            entries = sorted(self._index().values(), key=lambda e: e.id, reverse=True)
        matching = [e for e in entries if e.matches(model, text)]
        page = [e for e in matching if before is None or e.id < before][:limit]
        return page, len(matching)

    def get(self, image_id: str) -> Entry:
        with self._lock:
            entry = self._index().get(_checked(image_id))
        if entry is None:
            raise ImageNotFound(f"image {image_id!r} is not in the gallery")
        return entry

    def image_path(self, entry: Entry) -> Path:
        return self.root / f"{entry.id}.{entry.format}"

    def thumb_path(self, entry: Entry) -> Path:
        return self.root / f"{entry.id}.thumb.jpg"

    def source_path(self, entry: Entry) -> Path:
        """An edit's input image (ImageNotFound when the entry was made from text alone)."""
        if entry.source_digest is None:
            raise ImageNotFound(f"image {entry.id!r} was made from text alone: it has no source image")
        return self.root / f"{entry.id}.source.png"

    def mask_path(self, entry: Entry) -> Path:
        """An edit's mask (ImageNotFound when it had none)."""
        if not entry.mask:
            raise ImageNotFound(f"image {entry.id!r} had no mask")
        return self.root / f"{entry.id}.mask.png"

    def models(self) -> list[str]:
        """The model names that made the kept images, sorted."""
        with self._lock:
            return sorted({e.model for e in self._index().values()})

    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.bytes for e in self._index().values())

    # -- writing -------------------------------------------------------------------------------

    def add(self, image: bytes, entry: Entry, source: bytes | None = None, mask: bytes | None = None) -> Entry | None:
        """Keeps an image (entry.id, created_at, bytes and mask are filled in) and, for an edit
        (entry.source_digest set), the PNGs of its `source` image and `mask`; None when the cap
        keeps nothing."""
        if self.max_bytes <= 0:
            return None
        if entry.format not in FORMATS:
            raise InvalidInput(f"unsupported image format {entry.format!r}")
        if (source is None) != (entry.source_digest is None) or (mask is not None and source is None):
            raise InvalidInput("an edit's source image and its digest go together (and a mask needs them)")
        entry.id, entry.created_at = _new_id()
        entry.mask = mask is not None
        thumb = _thumbnail(image)
        entry.bytes = len(image) + len(thumb) + len(source or b"") + len(mask or b"")
        with self._lock:
            index = self._index()
            self.root.mkdir(parents=True, exist_ok=True)
            _write(self.image_path(entry), image)
            _write(self.thumb_path(entry), thumb)
            if source is not None:
                _write(self.source_path(entry), source)
            if mask is not None:
                _write(self.mask_path(entry), mask)
            _write(self.root / f"{entry.id}.json", json.dumps(asdict(entry), indent=1).encode())
            index[entry.id] = entry
            self._trim(index)
        return entry if entry.id in index else None

    def delete(self, image_id: str) -> Entry:
        with self._lock:
            index = self._index()
            entry = index.pop(_checked(image_id), None)
            if entry is None:
                raise ImageNotFound(f"image {image_id!r} is not in the gallery")
            self._remove(entry)
        return entry

    # -- internals -----------------------------------------------------------------------------

    def _index(self) -> dict[str, Entry]:
        if self._entries is None:
            self._entries = self._scan()
            self._trim(self._entries)  # a lowered cap applies at once
        return self._entries

    def _scan(self) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        if not self.root.is_dir():
            return entries
        names = os.listdir(self.root)
        for name in names:
            if not name.endswith(".json") or not ID_PATTERN.fullmatch(name[:-5]):
                continue
            try:
                entry = Entry.from_json(json.loads((self.root / name).read_bytes()))
            except (OSError, ValueError, TypeError) as e:
                log.warning("gallery: skipping %s: %s", name, e)
                continue
            if entry.id == name[:-5] and entry.format in FORMATS and self.image_path(entry).is_file():
                entries[entry.id] = entry
        for name in names:  # leftovers: temp files and images whose JSON never landed
            image_id = name.split(".", 1)[0]
            if name.startswith(".tmp-") or (ID_PATTERN.fullmatch(image_id) and image_id not in entries):
                log.info("gallery: removing leftover %s", name)
                _unlink(self.root / name)
        return entries

    def _trim(self, index: dict[str, Entry]) -> None:
        total = sum(e.bytes for e in index.values())
        for image_id in sorted(index):
            if total <= self.max_bytes:
                return
            entry = index.pop(image_id)
            total -= entry.bytes
            log.info("gallery: over its cap, removing the oldest image %s", image_id)
            self._remove(entry)

    def _remove(self, entry: Entry) -> None:
        _unlink(self.root / f"{entry.id}.json")  # first: without it the rest is a leftover
        _unlink(self.image_path(entry))
        _unlink(self.thumb_path(entry))
        if entry.source_digest is not None:
            _unlink(self.source_path(entry))
        if entry.mask:
            _unlink(self.mask_path(entry))


def _new_id() -> tuple[str, str]:
    now = datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S-%f}-{secrets.token_hex(3)}", now.isoformat()


def _checked(image_id: str) -> str:
    if not ID_PATTERN.fullmatch(image_id):
        raise ImageNotFound(f"image {image_id!r} is not in the gallery")
    return image_id


def _thumbnail(image: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(image)) as img:
        img = img.convert("RGB")
        img.thumbnail((THUMB_SIZE, THUMB_SIZE))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=85)
    return out.getvalue()


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{secrets.token_hex(6)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
