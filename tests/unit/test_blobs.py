"""Blob store and tensor file format, on tmp_path."""

import hashlib
import json
import struct

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from ollimg.blobs import BlobStore, read_header, tensor_blob_header
from ollimg.blobs.store import hash_range
from ollimg.errors import DigestMismatch, InvalidModel, StoreError


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_tensor_blob_header_is_a_loadable_one_tensor_safetensors_file(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    header = tensor_blob_header("F32", (3, 4))
    assert len(header) % 8 == 0
    (length,) = struct.unpack("<Q", header[:8])
    assert json.loads(header[8:8 + length]) == {"data": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}
    path = tmp_path / "blob"
    path.write_bytes(header + data.tobytes())
    with safe_open(path, "numpy") as f:
        assert list(f.keys()) == ["data"]
        np.testing.assert_array_equal(f.get_tensor("data"), data)


def test_writer_commits_under_its_digest_and_leaves_no_temp_file(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    with blobs.writer() as w:
        w.write(b"hello ")
        w.write(memoryview(b"world"))
        digest = w.commit()
    assert digest == sha(b"hello world") and w.new and w.size == 11
    assert blobs.path(digest).read_bytes() == b"hello world"
    assert blobs.temp_files() == [] and blobs.digests() == [digest]


def test_writer_of_an_existing_blob_does_not_rewrite_it(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    digest = blobs.put_bytes(b"same")
    before = blobs.path(digest).stat()
    with blobs.writer() as w:
        w.write(b"same")
        assert w.commit() == digest
    assert not w.new
    after = blobs.path(digest).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert blobs.temp_files() == []


def test_writer_refuses_a_wrong_digest_or_size(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    with pytest.raises(DigestMismatch):
        blobs.put_bytes(b"abc", expected=sha(b"abd"))
    with blobs.writer(sha(b"abc"), expected_size=4) as w:
        w.write(b"abc")
        with pytest.raises(DigestMismatch):
            w.commit()
    assert blobs.digests() == [] and blobs.temp_files() == []


def test_abandoned_writer_leaves_nothing(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    with pytest.raises(RuntimeError):
        with blobs.writer() as w:
            w.write(b"partial")
            raise RuntimeError("crash")
    assert blobs.digests() == [] and blobs.temp_files() == []


def test_put_range_stores_header_plus_range_and_dedupes(tmp_path):
    src = tmp_path / "src.bin"
    payload = bytes(range(256)) * 40000  # several mmap chunks are not needed; odd sizes are
    src.write_bytes(b"x" * 100 + payload + b"y" * 7)
    blobs = BlobStore(tmp_path / "blobs")
    seen = []
    digest, size, writer = blobs.put_range(src, 100, len(payload), b"HEAD", seen.append)
    assert size == 4 + len(payload) and digest == sha(b"HEAD" + payload)
    assert not blobs.has(digest)  # pending: verified, but invisible until it lands
    blobs.land([writer])
    assert writer.new and blobs.hash_file(digest) == digest
    assert blobs.path(digest).read_bytes() == b"HEAD" + payload
    assert sum(seen) == len(payload)
    assert blobs.temp_files() == []
    seen.clear()
    assert blobs.put_range(src, 100, len(payload), b"HEAD", seen.append) == (digest, size, None)  # hashed, not copied
    assert sum(seen) == len(payload)
    empty, _, writer = blobs.put_range(src, 0, 0, b"")
    blobs.land([writer])
    assert empty == sha(b"") and writer.new and blobs.has(empty, 0)


def test_put_range_refuses_a_source_that_changes_during_the_import(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"\0" * (20 << 20))
    blobs = BlobStore(tmp_path / "blobs")

    def grow(n):
        with open(src, "ab") as f:
            f.write(b"more")

    with pytest.raises(StoreError, match="changed while"):
        blobs.put_range(src, 0, 20 << 20, b"", grow)
    assert blobs.digests() == [] and blobs.temp_files() == []


def test_hash_range_matches_hashlib(tmp_path):
    src = tmp_path / "f"
    data = np.random.default_rng(0).bytes(3_000_001)
    src.write_bytes(data)
    with open(src, "rb") as f:
        assert hash_range(f.fileno(), 5, 2_999_990, b"p") == sha(b"p" + data[5:2_999_995])


def _write(path, tensors):
    save_file(tensors, path)
    return path


def test_read_header_finds_offsets(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = _write(tmp_path / "m.safetensors", {"a": a, "b": np.ones(4, dtype=np.float16)})
    tensors, _ = read_header(path)
    raw = path.read_bytes()
    ref = tensors["a"]
    assert (ref.dtype, ref.shape, ref.nbytes) == ("F32", (2, 3), 24)
    assert raw[ref.offset:ref.offset + ref.nbytes] == a.tobytes()


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:5], "shorter than 8 bytes"),
    (lambda raw: struct.pack("<Q", 10**12) + raw[8:], "corrupt safetensors header"),
    (lambda raw: raw[:8] + b"{nope" + raw[13:], "corrupt safetensors header"),
    (lambda raw: raw[:-10], "truncated"),
    (lambda raw: raw.replace(b'"F32"', b'"C64"'), "unsupported dtype"),
    (lambda raw: raw.replace(b'"shape":[2,3]', b'"shape":[3,3]'), "its shape needs"),
])
def test_read_header_rejects_damaged_files(tmp_path, damage, message):
    path = _write(tmp_path / "m.safetensors", {"a": np.zeros((2, 3), dtype=np.float32)})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(InvalidModel, match=message):
        read_header(path)
