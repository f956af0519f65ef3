"""Pulls from a registry that lies (tests/reliability/fake_registry.py): titles that are paths out of
the store, sizes that lie, safetensors headers that lie, image indexes, configs that are not
objects, credential traps. Whatever it serves, a pull writes nothing outside the store, leaves
the store consistent (`verify`), raises an OllimgError rather than crashing, and sends no
credentials to a host they were not configured for.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from pathlib import Path

import pytest

from ollimg import models
from ollimg.errors import AuthError, OllimgError
from ollimg.manifest import Name, Store
from ollimg.registry import pull
from ollimg.registry.auth import Credentials, save_credentials
from ollimg.server.routes.common import details
from tests.reliability.fake_registry import OCI_INDEX, TENSOR_TYPE, FakeRegistry
from tests.synthetic_model import listing

OUTSIDE = Path("/tmp") / f"ollimg-red-team-{uuid.uuid4().hex}.txt"


def tensor_blob(header: bytes, data: bytes = b"") -> bytes:
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


def _cases(reg: FakeRegistry) -> dict[str, str]:
    """name -> what it tries; each served by `reg` under the repo `evil/<name>`."""
    good_tensor = tensor_blob(b'{"data":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8)
    t = {"io.ollimg.tensor.dtype": "F32", "io.ollimg.tensor.shape": "2"}
    cases = {
        "title-dotdot": [reg.layer(b"x", "../../../../outside.txt")],
        "title-absolute": [reg.layer(b"x", str(OUTSIDE))],
        "title-inner-dotdot": [reg.layer(b"x", "tokenizer/../../../../x.txt")],
        "size-says-100gib": [reg.layer(b"y" * 1000, "a.txt", size=100 << 30)],
        "size-says-2-to-62": [reg.layer(b"z" * 1000, "a.txt", size=1 << 62)],
        "size-says-100mb": [reg.layer(b"u" * 1000, "a.txt", size=100 << 20)],
        "size-says-less": [reg.layer(b"w" * 5000, "a.txt", size=1000)],
        "size-negative": [reg.layer(b"v", "a.txt", size=-1)],
        "header-offsets-beyond": [reg.layer(tensor_blob(b'{"data":{"dtype":"F32","shape":[1000000],'
                                                        b'"data_offsets":[0,4000000]}}'), "t/w", TENSOR_TYPE, **t)],
        "header-nested-brackets": [reg.layer(tensor_blob(b"[" * 50000), "t/w", TENSOR_TYPE, **t)],
        "header-length-huge": [reg.layer(struct.pack("<Q", 1 << 60) + b"{}", "t/w", TENSOR_TYPE, **t)],
        "tensor-ok-title-out": [reg.layer(good_tensor, "../t/w", TENSOR_TYPE, **t)],
    }
    for name, layers in cases.items():
        reg.add_model(f"evil/{name}", "v1", layers)
    for name, config in {"config-list": b"[1,2,3]", "config-null": b"null", "config-string": b'"x"',
                         "config-binary": b"\xff\xfe\x00garbage"}.items():
        reg.add_model(f"evil/{name}", "v1", [reg.layer(b"x", "a.txt")], config=config)
        cases[name] = []
    reg.add_model("evil/image-index", "v1", [], media_type=OCI_INDEX)
    reg.manifests[("evil/image-index", "v1")] = (json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "0" * 64,
                       "size": 10, "platform": {"os": "linux", "architecture": "amd64"}}]}).encode(), OCI_INDEX)
    cases["image-index"] = []
    reg.manifests[("evil/not-json", "v1")] = (b"\x00\x01 not a manifest", "application/vnd.oci.image.manifest.v1+json")
    cases["not-json"] = []
    return {name: f"{reg.host}/evil/{name}:v1" for name in cases}


def _outside(root: Path, store: Path) -> list:
    return [entry for entry in listing(root) if not entry[0].startswith(str(store.relative_to(root)))]


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def test_a_lying_registry_writes_nothing_outside_the_store(tmp_path, monkeypatch, figures):
    reg = FakeRegistry().start()
    monkeypatch.chdir(tmp_path)
    try:
        names = _cases(reg)
        store = Store(tmp_path / "store")
        before = _outside(tmp_path, store.root)
        outcomes, inconsistent, crashes = {}, 0, []
        for case, name in names.items():
            try:
                model = pull(store, name)
                try:
                    model.config, model.tensors()  # what a runtime reads first: InvalidModel, never a crash
                    outcomes[case] = "stored"
                except OllimgError as e:
                    outcomes[case] = f"stored, refused at load: {e.code}"
            except OllimgError as e:
                outcomes[case] = f"refused: {e.code}"
            except Exception as e:  # noqa: BLE001 (this is what the test looks for)
                crashes.append(f"{case}: {type(e).__name__}: {e}")
            inconsistent += not models.verify(store).ok
        listed = [details(m) for m in store.models()]  # what /api/tags and `ollimg list` show: one bad model spoils none
        written_outside = [e for e in _outside(tmp_path, store.root) if e not in before]
        disk = _disk_bytes(store.root)
        leftover = sum(p.stat().st_size for p in store.blobs.temp_files())
        figures.update(cases=len(names), crashes=len(crashes), written_outside=len(written_outside) + OUTSIDE.exists(),
                       inconsistent=inconsistent, store_disk_bytes=disk, temp_file_apparent_bytes=leftover,
                       outcomes=outcomes)
        assert not crashes, crashes
        assert not written_outside and not OUTSIDE.exists() and not (tmp_path.parent / "outside.txt").exists()
        assert inconsistent == 0
        assert disk < 64 << 20, "a lying size made the store take real disk space"
        assert len(listed) == len(store.models()) > 0
        for case in ("config-list", "config-null", "config-string", "config-binary"):
            assert outcomes[case] == "stored, refused at load: invalid_model", case
        assert outcomes["image-index"] == "refused: invalid_model"
        assert outcomes["header-nested-brackets"].endswith("invalid_model")
        for case in ("size-says-less", "size-says-100mb", "size-says-2-to-62", "title-dotdot", "title-absolute",
                     "title-inner-dotdot", "tensor-ok-title-out"):
            assert outcomes[case].startswith("refused"), case
    finally:
        reg.stop()
        OUTSIDE.unlink(missing_ok=True)


def test_env_credentials_are_not_sent_to_a_host_that_asks(tmp_path, monkeypatch):
    """The red-team case: `/api/pull {"model": "attacker.example/x/y"}` drew OLLIMG_REGISTRY_* out."""
    reg = FakeRegistry().start()
    reg.challenge = True
    monkeypatch.setenv("OLLIMG_REGISTRY", "registry.ollimg.dev")
    monkeypatch.setenv("OLLIMG_REGISTRY_USER", "admin")
    monkeypatch.setenv("OLLIMG_REGISTRY_PASSWORD", "hunter2-secret")
    try:
        reg.add_model("x/y", "latest", [reg.layer(b"x", "a.txt")])
        with pytest.raises(AuthError, match="requires authentication"):
            pull(Store(tmp_path / "store"), f"{reg.host}/x/y")
        assert reg.authorizations and set(reg.authorizations) == {None}
    finally:
        reg.stop()


def test_login_credentials_do_not_follow_a_redirect_to_another_host(tmp_path):
    """Stored credentials for the registry; its blob GETs redirect to a second host, which gets none."""
    reg, other = FakeRegistry().start(), FakeRegistry().start()
    reg.challenge = True
    try:
        data = os.urandom(2000)
        reg.add_model("x/y", "latest", [reg.layer(data, "a.txt")])
        other.blobs.update(reg.blobs)
        reg.redirect_blobs_to = f"http://{other.host}"
        save_credentials(reg.host, Credentials("alice", "s3cret-pass"))
        model = pull(Store(tmp_path / "store"), f"{reg.host}/x/y")
        assert model.name == Name.parse(f"{reg.host}/x/y")
        assert any(a and a.startswith("Basic ") for a in reg.authorizations)
        assert other.authorizations and set(other.authorizations) == {None}
    finally:
        reg.stop()
        other.stop()
