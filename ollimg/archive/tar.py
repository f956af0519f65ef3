"""The tar format, streamed: member headers to write, and a reader over a stream of byte chunks.

The reader never seeks and never holds more than the chunk it is in: member data comes out as
memoryviews of the chunks as they arrive. It understands ustar, PAX (`x` records for long paths
and sizes over 8 GiB; `g` records are ignored) and GNU long names, and it insists on the
end-of-archive marker, so an archive cut short at a member boundary is still found truncated.
Imports only errors: no store, no HTTP.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import Iterable, Iterator

from ollimg.errors import InvalidModel

BLOCK = 512
END = b"\0" * (2 * BLOCK)
MAX_META = 1 << 20  # a PAX record or GNU long name larger than this is not an image layout's
FILE, DIRECTORY = tarfile.REGTYPE, tarfile.DIRTYPE


def header(path: str, size: int, kind: bytes = FILE) -> bytes:
    """The header block(s) of one member: mode 0644 (0755 for directories), mtime 0, no owner, so
    the same models always give the same bytes. PAX records only where ustar cannot say it."""
    info = tarfile.TarInfo(path)
    info.size, info.type, info.mtime = size, kind, 0
    info.mode = 0o755 if kind == DIRECTORY else 0o644
    return info.tobuf(tarfile.PAX_FORMAT)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def member_size(path: str, size: int, kind: bytes = FILE) -> int:
    """Bytes the member takes in the archive: header, data, padding."""
    return len(header(path, size, kind)) + size + (-size % BLOCK)


def truncated(what: str) -> InvalidModel:
    return InvalidModel(f"the archive is truncated ({what}); nothing was loaded")


@dataclass(frozen=True)
class Member:
    path: str
    kind: bytes  # tarfile's type byte: REGTYPE, DIRTYPE, SYMTYPE, ...
    size: int


class TarReader:
    """`for member in reader:` then `reader.data()` for its bytes (what is not read is skipped)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buf = memoryview(b"")
        self._left = 0  # bytes of the current member's data not read yet
        self._pad = 0

    def __iter__(self) -> Iterator[Member]:
        pax: dict[str, str] = {}
        long_name: str | None = None
        while True:
            self._skip(self._left + self._pad)
            self._left = self._pad = 0
            block = self._read(BLOCK, "in a member header")
            if block == END[:BLOCK]:
                self._read(BLOCK, "in the end-of-archive marker")
                for _ in self._chunks:  # the rest (record padding) must still arrive whole: zstd checks its frame
                    pass
                return
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as e:
                raise InvalidModel(f"the archive is corrupt: a tar header is invalid ({e}); nothing was loaded") from None
            size = int(pax.get("size", info.size))
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                if size > MAX_META:
                    raise InvalidModel(f"the archive is corrupt: a {size}-byte tar extended header; nothing was loaded")
                data = self._read(size, "in a tar extended header")
                self._skip(-size % BLOCK)
                if info.type == tarfile.XHDTYPE:
                    pax = _pax_records(data)
                elif info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            path = pax.get("path") or long_name or info.name
            pax, long_name = {}, None
            if info.type in tarfile.SUPPORTED_TYPES and info.type not in tarfile.REGULAR_TYPES:
                size = 0  # as tarfile reads them: directories, links and devices carry no data
            kind = tarfile.REGTYPE if info.type in (tarfile.AREGTYPE, tarfile.CONTTYPE) else info.type
            self._left, self._pad = size, -size % BLOCK
            yield Member(path, kind, size)

    def data(self) -> Iterator[memoryview]:
        """The current member's bytes, in pieces that are valid until the next piece is asked for."""
        while self._left:
            if not self._buf and not self._fill():
                raise truncated(f"{self._left} bytes of a member are missing")
            piece = self._buf[: self._left]
            self._buf = self._buf[len(piece):]
            self._left -= len(piece)
            yield piece

    def _fill(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buf = memoryview(chunk)
                return True
        return False

    def _read(self, n: int, where: str) -> bytes:
        parts = []
        while n:
            if not self._buf and not self._fill():
                raise truncated(f"it ends {where}" if where != "in a member header" or parts else "no end-of-archive marker")
            piece = self._buf[:n]
            self._buf = self._buf[len(piece):]
            n -= len(piece)
            parts.append(piece)
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n:
            if not self._buf and not self._fill():
                raise truncated("a member's data ends early")
            step = min(n, len(self._buf))
            self._buf = self._buf[step:]
            n -= step


def _pax_records(data: bytes) -> dict[str, str]:
    """`<length> <key>=<value>\\n` records (POSIX.1-2001)."""
    records = {}
    pos = 0
    try:
        while pos < len(data):
            space = data.index(b" ", pos)
            length = int(data[pos:space])
            if length <= space - pos:
                raise ValueError
            key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
            records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
            pos += length
    except ValueError:
        raise InvalidModel("the archive is corrupt: a PAX header record is malformed; nothing was loaded") from None
    return records
