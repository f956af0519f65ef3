"""Length-prefixed JSON frames over a byte stream (the runtime subprocess's stdin/stdout).

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON. Imports no torch or mlx.
"""

from __future__ import annotations

import json
import struct
import threading
from typing import BinaryIO

MAX_FRAME = 1 << 30


class Channel:
    def __init__(self, reader: BinaryIO, writer: BinaryIO):
        self.reader, self.writer = reader, writer
        self._lock = threading.Lock()

    def send(self, message: dict) -> None:
        """Thread-safe; raises OSError (BrokenPipeError) when the other side is gone."""
        data = json.dumps(message, separators=(",", ":")).encode()
        with self._lock:
            self.writer.write(struct.pack(">I", len(data)) + data)
            self.writer.flush()

    def receive(self) -> dict | None:
        """The next message, or None at end of stream."""
        head = self._read(4)
        if head is None:
            return None
        (length,) = struct.unpack(">I", head)
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes is too large")
        body = self._read(length)
        if body is None:
            return None
        return json.loads(body)

    def _read(self, n: int) -> bytes | None:
        chunks, left = [], n
        while left:
            chunk = self.reader.read(left)
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
