"""Issue 13's create/store findings as regression tests: create does not follow links out of the model,
blobs are private to their owner, and /api/create does not tell whether a server path exists."""

from __future__ import annotations

import os
import stat

import pytest

from ollimg.create import create
from ollimg.errors import InvalidModel
from ollimg.manifest import Store
from tests.synthetic_model import listing, make_model
from tests.unit.asgi import call
from tests.unit.test_store import _hf_cache


@pytest.fixture
def store(store_dir):
    return Store(store_dir)


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "elsewhere" / "secret.txt"
    path.parent.mkdir()
    path.write_text("the server's private key")
    return path


@pytest.mark.parametrize("where", ["tokenizer/notes.txt", "README.md", "LICENSE", "vae/extra/config.json"])
def test_a_link_out_of_the_model_is_refused(store, tmp_path, secret, where):
    model_dir = make_model(tmp_path / "src")
    link = model_dir / where
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    with pytest.raises(InvalidModel, match="link to a file outside the model directory") as info:
        create(store, "leak", model_dir)
    assert str(secret) not in str(info.value)
    assert listing(store.root) == [] or not any(store.blobs.digests())


def test_a_linked_directory_out_of_the_model_is_not_imported(store, tmp_path, secret):
    model_dir = make_model(tmp_path / "src")
    (model_dir / "tokenizer" / "more").symlink_to(secret.parent, target_is_directory=True)
    try:
        model = create(store, "dirlink", model_dir)
    except InvalidModel as e:
        assert "outside the model directory" in str(e)
        return
    for blob in model.manifest.blobs():
        assert b"private key" not in store.blobs.read_bytes(blob.digest)


def test_component_names_cannot_leave_the_model(store, tmp_path, secret):
    import json

    model_dir = make_model(tmp_path / "src")
    index = json.loads((model_dir / "model_index.json").read_text())
    index["../elsewhere"] = ["x", "Y"]
    (model_dir / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidModel, match="not a plain directory name"):
        create(store, "escape", model_dir)


def test_hf_cache_links_inside_the_repo_work_and_links_out_of_it_do_not(store, tmp_path, secret):
    repo = _hf_cache(tmp_path, make_model(tmp_path / "src"))
    snapshot = next((repo / "snapshots").iterdir())
    assert (snapshot / "model_index.json").is_symlink()
    assert create(store, "cached", repo).manifest.layers
    (snapshot / "tokenizer" / "stolen.txt").symlink_to(secret)
    with pytest.raises(InvalidModel, match="outside the model directory"):
        create(store, "cached2", snapshot)


def test_refs_main_cannot_point_out_of_the_snapshots(store, tmp_path):
    repo = _hf_cache(tmp_path, make_model(tmp_path / "src"))
    (repo / "refs" / "main").write_text("../../../../etc")
    with pytest.raises(InvalidModel, match="without a commit in refs/main"):
        create(store, "x", repo)


def test_blobs_are_private_to_the_owner(store, tmp_path):
    old = os.umask(0o022)
    try:
        model = create(store, "mine", make_model(tmp_path / "src"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.blobs.root.stat().st_mode) == 0o700
    for blob in model.manifest.blobs():
        assert stat.S_IMODE(store.blobs.path(blob.digest).stat().st_mode) == 0o600


def test_api_create_does_not_tell_whether_a_path_exists(tmp_path):
    (tmp_path / "exists-dir").mkdir()
    (tmp_path / "exists-file").write_text("x")

    async def fn(c, _):
        out = {}
        for name in ("exists-dir", "exists-file", "missing"):
            r = await c.post("/api/create", json={"model": "x", "from": str(tmp_path / name), "stream": False})
            out[name] = (r.status_code, r.json()["error"].replace(str(tmp_path / name), "<path>"))
        return out

    answers = call(tmp_path, fn)
    assert len(set(answers.values())) == 1, answers
    status, message = answers["missing"]
    assert status == 400 and "not a diffusers model directory" in message
