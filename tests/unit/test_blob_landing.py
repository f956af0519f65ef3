"""The BlobStore additions pull uses: deferred commits landed in batches, and adopting a partial file."""

import hashlib

import pytest

from ollimg.blobs import BlobStore
from ollimg.blobs.store import OVERLAP
from ollimg.errors import DigestMismatch


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_deferred_commit_is_invisible_until_landed(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    writers = []
    for data in (b"one", b"two"):
        with store.writer(digest(data), len(data)) as w:
            w.write(data)
            w.commit(sync=False)
        writers.append(w)
    assert store.digests() == [] and len(store.temp_files()) == 2
    store.land(writers)
    assert store.digests() == sorted([digest(b"one"), digest(b"two")])
    assert store.temp_files() == []
    assert store.read_bytes(digest(b"two")) == b"two"


def test_deferred_commit_still_verifies(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(DigestMismatch):
        with store.writer(digest(b"good"), 4) as w:
            w.write(b"evil")
            w.commit(sync=False)
    assert store.temp_files() == [] and store.digests() == []


def test_large_pieces_hashed_beside_their_write_keep_their_order(tmp_path):
    """Pieces of OVERLAP bytes and more are hashed on a helper thread while they are written:
    the digest is still that of the bytes in the order written, mixed with small pieces."""
    store = BlobStore(tmp_path / "blobs")
    big = [bytes([i]) * (OVERLAP + i) for i in range(3)]
    pieces = [big[0], b"small", memoryview(big[1]), big[2]]
    data = b"".join(pieces)
    with store.writer(digest(data), len(data)) as w:
        for piece in pieces:
            w.write(piece)
        w.commit(sync=False)
    store.land([w])
    assert store.read_bytes(digest(data)) == data
    backwards = b"".join(reversed(pieces))
    for expected, ok in ((digest(data), False), (digest(backwards), True)):
        with store.writer(expected, len(data)) as w:
            for piece in reversed(pieces):
                w.write(piece)
            if ok:
                assert w.commit(sync=False) == digest(backwards)
            else:
                with pytest.raises(DigestMismatch):
                    w.commit(sync=False)
    assert len(store.temp_files()) == 1  # the pending backwards blob


def test_adopt_verifies_and_renames_or_deletes(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    data = b"x" * 1000
    partial = store.partial_path(digest(data))
    assert partial.name.startswith(".tmp-partial-sha256-")
    store.root.mkdir(parents=True)
    partial.write_bytes(data)
    assert store.adopt(partial, digest(data), len(data)) == digest(data)
    assert store.has(digest(data), 1000) and not partial.exists()

    partial.write_bytes(b"y" * 1000)
    with pytest.raises(DigestMismatch):
        store.adopt(partial, digest(b"z" * 1000), 1000)
    assert not partial.exists()
