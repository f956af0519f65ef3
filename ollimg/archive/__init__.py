"""Models as OCI image layouts in a tar (optionally zstd-compressed): `save` and `load`, streamed.

The format logic only: it reads and writes byte streams and the store, and knows nothing of
HTTP (the server and the CLI feed it). Must not import httpx, fastapi, rich, torch or mlx.
"""

from ollimg.archive.layout import DirectoryTar
from ollimg.archive.load import Loaded, load, plain_tar, read_chunks
from ollimg.archive.save import DEFAULT_LEVEL, Archive, Saved, compress, save

__all__ = ["Archive", "DEFAULT_LEVEL", "DirectoryTar", "Loaded", "Saved", "compress", "load", "plain_tar", "read_chunks", "save"]
