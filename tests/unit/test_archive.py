"""save and load of OCI image layout archives on tmp_path stores: round trips, dedup, order, and
every kind of bad input (which must raise one line and leave the store exactly as it was).
Archives are read back with Python's own tarfile, an independent reader, where it matters."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from ollimg.archive import load, save
from ollimg.archive.layout import INDEX_FILE, LAYOUT_FILE, REF_NAME
from ollimg.errors import InvalidModel
from ollimg.manifest import Name, Store
from tests.synthetic_model import listing, pipeline_tensors, write_model

MiB = 1 << 20


def model(store: Store, name: str, seed: int, count: int = 12, size: int = MiB):
    return write_model(store, name, pipeline_tensors(count, size, seed), {"model_index.json": b'{"_class_name": "X"}'}, seed)


@pytest.fixture
def src(tmp_path) -> Store:
    store = Store(tmp_path / "src")
    first = model(store, "me/a:v1", seed=1)
    store.put_manifest(Name.parse("me/a-copy:v2"), first.raw)  # same blobs under a second name
    model(store, "other.host:5000/team/b:latest", seed=2)
    return store


NAMES = ["me/a:v1", "me/a-copy:v2", "other.host:5000/team/b:latest"]


def saved(store: Store, names=NAMES, level: int | None = None) -> bytes:
    out = io.BytesIO()
    save(store, names, out, level=level)
    return out.getvalue()


def pieces(data: bytes, size: int = 65536) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def assert_same(a: Store, b: Store, names=NAMES) -> None:
    for text in names:
        ma, mb = a.get(Name.parse(text)), b.get(Name.parse(text))
        assert mb.raw == ma.raw
        for desc in ma.manifest.blobs():
            assert b.blobs.path(desc.digest).read_bytes() == a.blobs.path(desc.digest).read_bytes()
    assert b.blobs.temp_files() == []


@pytest.mark.parametrize("level", [None, 3])
def test_round_trip_is_byte_identical_and_dedups(src, tmp_path, level):
    data = saved(src, level=level)
    assert (data[:4] == b"\x28\xb5\x2f\xfd") == (level is not None)
    dst = Store(tmp_path / "dst")
    loaded = load(dst, pieces(data))
    assert [m.name.display() for m in loaded.models] == NAMES
    assert_same(src, dst)
    unique = {d.digest: d.size for n in NAMES for d in src.get(Name.parse(n)).manifest.blobs()}
    assert loaded.new_bytes == sum(unique.values()) and loaded.deduplicated_bytes == 0
    again = load(dst, pieces(data, 1000))  # tiny pieces: headers and blobs split across chunks
    assert again.new_bytes == 0 and again.deduplicated_bytes == sum(unique.values())
    assert_same(src, dst)


def test_the_archive_is_a_plain_oci_layout(src):
    data = saved(src)
    assert data == saved(src)  # deterministic: same models, same bytes
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        assert names[:4] == ["blobs", "blobs/sha256", LAYOUT_FILE, INDEX_FILE]
        assert json.loads(tar.extractfile(LAYOUT_FILE).read()) == {"imageLayoutVersion": "1.0.0"}
        index = json.loads(tar.extractfile(INDEX_FILE).read())
        refs = [m["annotations"][REF_NAME] for m in index["manifests"]]
        assert refs == [str(Name.parse(n)) for n in NAMES]
        for entry, ref in zip(index["manifests"], refs):
            raw = src.get(Name.parse(ref)).raw
            assert tar.extractfile("blobs/sha256/" + entry["digest"][7:]).read() == raw
            assert entry["size"] == len(raw) and entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        blobs = [n for n in names if n.startswith("blobs/sha256/")]
        assert len(blobs) == len(set(blobs))  # each blob once, shared ones too
        for name in blobs:
            data = tar.extractfile(name).read()
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]


def rewrite(data: bytes, edit) -> bytes:
    """The archive's members as [(TarInfo, bytes)], changed by `edit`, written back as a plain tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]
    members = edit(members)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, body in members:
            info.size = len(body) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(body) if info.isfile() else None)
    return out.getvalue()


def test_index_last_and_a_directory_layout_load_too(src, tmp_path):
    data = rewrite(saved(src), lambda ms: [m for m in ms if m[0].name != INDEX_FILE] + [m for m in ms if m[0].name == INDEX_FILE])
    dst = Store(tmp_path / "dst")
    load(dst, [data])
    assert_same(src, dst)

    layout = tmp_path / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", "-", "-C", str(layout)], input=saved(src), check=True)  # GNU tar unpacks it
    dir_store = Store(tmp_path / "from-dir")
    loaded = load(dir_store, layout)
    assert [m.name.display() for m in loaded.models] == NAMES
    assert_same(src, dir_store)


def test_memory_stays_bounded(tmp_path):
    """Python's allocations while saving and loading a 128 MiB model (incompressible, the worst
    case for zstd's buffers) stay far below its size: nothing is staged whole."""
    store = Store(tmp_path / "src")
    big = write_model(store, "me/big:v1", {"t/big.weight": ("BF16", (64 * 1024, 1024))}, {}, seed=3)
    out = tmp_path / "big.tar.zst"
    tracemalloc.start()
    try:
        with open(out, "wb") as f:
            save(store, ["me/big:v1"], f)
        _, save_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        load(Store(tmp_path / "dst"), out)
        _, load_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert big.size > 128 * MiB and out.stat().st_size > 128 * MiB
    assert save_peak < 40 * MiB and load_peak < 24 * MiB, (save_peak, load_peak)


# -- bad input: one line, nothing lands ----------------------------------------------------------


def blob_member(data: bytes, src: Store) -> str:
    """The tar path of a tensor blob (the largest layer) of me/a:v1."""
    layers = src.get(Name.parse("me/a:v1")).manifest.layers
    return "blobs/sha256/" + max(layers, key=lambda d: d.size).digest[7:]


def corrupt_blob(data: bytes, src: Store) -> bytes:
    target = blob_member(data, src)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offset = tar.getmember(target).offset_data
    flipped = bytearray(data)
    flipped[offset + 1000] ^= 0xFF
    return bytes(flipped)


def drop(path_of):
    def edit(members):
        return [m for m in members if m[0].name != path_of(members)]
    return edit


def link_entry(members):
    info = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
    info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    return members + [(info, b"")]


def extra_entry(path):
    def edit(members):
        return members[:3] + [(tarfile.TarInfo(path), b"evil")] + members[3:]
    return edit


def edit_index(change):
    def edit(members):
        out = []
        for info, body in members:
            if info.name == INDEX_FILE:
                index = json.loads(body)
                change(index)
                body = json.dumps(index).encode()
            out.append((info, body))
        return out
    return edit


CASES = {
    "truncated in a blob": (lambda d, s: d[: len(d) // 2], "truncated"),
    "truncated at a member boundary": (lambda d, s: d[: len(d) - 1024], "truncated"),
    "truncated in a header": (lambda d, s: d[:1536 + 100], "truncated"),
    "truncated zstd": (lambda d, s: zstandard.ZstdCompressor(write_checksum=True).compress(d)[:-50], "truncated"),
    "corrupt zstd": (lambda d, s: _flip_middle(zstandard.ZstdCompressor(write_checksum=True).compress(d)), "corrupt"),
    "blob does not match its digest": (corrupt_blob, "does not match its digest"),
    "path escapes the layout": (lambda d, s: rewrite(d, extra_entry("../outside")), "outside the image layout"),
    "absolute path": (lambda d, s: rewrite(d, extra_entry("/etc/cron.d/x")), "outside the image layout"),
    "escape through blobs": (lambda d, s: rewrite(d, extra_entry("blobs/sha256/../../../x")), "outside the image layout"),
    "symlink": (lambda d, s: rewrite(d, link_entry), "link or special file"),
    "manifest names a missing blob": (lambda d, s: rewrite(d, drop(lambda ms: blob_member(d, s))), "in neither the archive nor the store"),
    "index names a missing manifest": (
        lambda d, s: rewrite(d, drop(lambda ms: "blobs/sha256/" + s.get(Name.parse("me/a:v1")).digest[7:])), "not in the archive"),
    "no index.json": (lambda d, s: rewrite(d, drop(lambda ms: INDEX_FILE)), "no index.json"),
    "no oci-layout": (lambda d, s: rewrite(d, drop(lambda ms: LAYOUT_FILE)), "no oci-layout"),
    "unnamed manifest": (lambda d, s: rewrite(d, edit_index(lambda i: i["manifests"][0].pop("annotations"))), "no model name"),
    "index size lies": (lambda d, s: rewrite(d, edit_index(lambda i: i["manifests"][0].update(size=5))), "5 bytes"),
    "sha512 blob": (lambda d, s: rewrite(d, extra_entry("blobs/sha512/" + "a" * 128)), "only sha256"),
    "not an archive": (lambda d, s: b"hello world" * 100, "not a tar or tar.zst archive"),
    "gzip": (lambda d, s: b"\x1f\x8b\x08\x00" + b"\0" * 600, "gzip"),
    "empty": (lambda d, s: b"", "empty"),
    "garbage after a zstd frame": (lambda d, s: zstandard.ZstdCompressor().compress(d) + b"junk", "corrupt"),
}


def _flip_middle(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x55
    return bytes(flipped)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_archive_lands_nothing(src, tmp_path, case):
    make, text = CASES[case]
    bad = make(saved(src, NAMES[:2]), src)
    dst = Store(tmp_path / "dst")
    model(dst, "me/already-here:v1", seed=9)  # the store is not empty: it must stay exactly as it is
    before = listing(dst.root)
    with pytest.raises(InvalidModel) as raised:
        load(dst, pieces(bad))
    message = str(raised.value)
    assert text in message and "\n" not in message, message
    assert listing(dst.root) == before
    assert dst.blobs.temp_files() == []


def with_manifest(data: bytes, raw: bytes) -> bytes:
    """The archive with its first model's manifest replaced by `raw` (index.json follows)."""
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()

    def edit(members):
        members = members + [(tarfile.TarInfo("blobs/sha256/" + digest[7:]), raw)]
        return edit_index(lambda i: i["manifests"][0].update(digest=digest, size=len(raw)))(members)

    return rewrite(data, edit)


def test_a_container_image_or_a_lying_manifest_is_not_loaded(src, tmp_path):
    a = src.get(Name.parse("me/a:v1"))
    data = saved(src, NAMES[:1])
    image = a.raw.replace(b"application/vnd.ollimg.model.config.v1+json", b"application/vnd.oci.image.config.v1+json")
    layer = a.manifest.layers[0]
    lying = a.raw.replace(f'"digest":"{layer.digest}","size":{layer.size}'.encode(),
                          f'"digest":"{layer.digest}","size":{layer.size + 1}'.encode())
    assert lying != a.raw
    dst = Store(tmp_path / "dst")
    with pytest.raises(InvalidModel, match="not an ollimg model"):
        load(dst, [with_manifest(data, image)])
    with pytest.raises(InvalidModel, match=f"gives blob {layer.digest} {layer.size + 1} bytes"):
        load(dst, [with_manifest(data, lying)])
    assert listing(dst.root) == []


def test_a_missing_blob_the_store_has_is_fine(src, tmp_path):
    """An archive may leave out blobs the store already holds (what dedup means on the way in)."""
    data = saved(src, NAMES[:1])
    dst = Store(tmp_path / "dst")
    load(dst, [data])
    target = blob_member(data, src)
    loaded = load(dst, [rewrite(data, drop(lambda ms: target))])
    assert loaded.new_bytes == 0
    assert_same(src, dst, NAMES[:1])


def test_unknown_model_and_missing_file(src, tmp_path):
    from ollimg.errors import ModelNotFound

    with pytest.raises(ModelNotFound):
        save(src, ["me/nope:v1"], io.BytesIO())
    with pytest.raises(InvalidModel, match="no such file"):
        load(Store(tmp_path / "dst"), Path(tmp_path / "missing.tar.zst"))
    with pytest.raises(InvalidModel, match="not an OCI image layout"):
        load(Store(tmp_path / "dst"), tmp_path)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names_in_pax_and_gnu_headers_are_read(src, tmp_path, fmt):
    """Other tools write long paths as PAX records or GNU long-name members; files outside the
    layout's own are ignored, blobs still load."""
    with tarfile.open(fileobj=io.BytesIO(saved(src, NAMES[:1]))) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        tar.addfile(tarfile.TarInfo("notes/" + "x" * 150), io.BytesIO(b""))
        for info, body in members:
            if info.isfile():
                info = tarfile.TarInfo("./" + "./" * 60 + info.name)  # longer than ustar's 100 characters
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    dst = Store(tmp_path / "dst")
    load(dst, pieces(out.getvalue(), 7000))
    assert_same(src, dst, NAMES[:1])


def test_a_pinned_digest_is_checked_and_not_written(src):
    a = src.get(Name.parse("me/a:v1"))
    data = saved(src, [f"me/a:v1@{a.digest}"])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        index = json.loads(tar.extractfile(INDEX_FILE).read())
    assert index["manifests"][0]["annotations"][REF_NAME] == str(Name.parse("me/a:v1"))
    from ollimg.errors import ModelNotFound

    with pytest.raises(ModelNotFound):
        saved(src, ["me/a:v1@sha256:" + "0" * 64])
