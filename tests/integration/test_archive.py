"""`ollimg save` / `ollimg load` through the real CLI, through a real `ollimg serve`, and with tools
nobody here wrote: Debian's skopeo moves saved models into the local docker-registry (and pushed
models out of it into OCI layouts) and `ollimg pull` / `ollimg load` take them back byte for byte.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest

from ollimg.archive import Archive
from ollimg.manifest import Name, Store
from tests.conftest import OLLIMG, cli_env
from tests.integration.test_registry import assert_same_model, run_cli as _run_cli, small_model
from tests.integration.test_server import Server
from tests.synthetic_model import listing, pipeline_tensors, write_model


TIMEOUT = 300  # seconds for one command: generous, the test machine is shared
MiB = 1 << 20


def run_cli(*args: str, models: Path) -> subprocess.CompletedProcess:
    return _run_cli(*args, models=models, timeout=TIMEOUT)


def skopeo(*args: str) -> subprocess.CompletedProcess:
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is needed: apt-get install skopeo (see scripts/system-deps)")
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return proc


def one_error_line(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and text in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_save_load_files_pipes_and_json(tmp_path):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    small_model(src, "me/a:v1", seed=1)
    small_model(src, "me/b:v1", seed=2)
    archive = tmp_path / "models.tar.zst"
    saved = run_cli("save", "me/a:v1", "me/b:v1", "-o", str(archive), "--level", "5", models=src.root)
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.startswith("saved 'me/a:v1', 'me/b:v1' to ")
    assert archive.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"

    loaded = run_cli("load", "--json", str(archive), models=dst.root)
    assert loaded.returncode == 0, loaded.stderr
    lines = [json.loads(line) for line in loaded.stdout.splitlines()]
    assert lines[-1]["status"] == "success" and lines[-1]["models"] == ["me/a:v1", "me/b:v1"]
    assert any(e.get("status", "").startswith("loading ") and "digest" in e for e in lines)
    for name in ("me/a:v1", "me/b:v1"):
        assert_same_model(src, dst, name)

    # save -o - | load -: plain tar on the pipe; everything is already there, so all deduplicated
    piped = subprocess.run(
        f"{' '.join(OLLIMG)} save me/a:v1 --format tar -o - | OLLIMG_MODELS={dst.root} {' '.join(OLLIMG)} load -",
        shell=True, env=cli_env(OLLIMG_MODELS=str(src.root)), capture_output=True, text=True, timeout=TIMEOUT)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.splitlines()[0] == "loaded 'me/a:v1'" and piped.stdout.splitlines()[1].startswith("0 B new, ")

    plain = tmp_path / "a.tar"
    assert run_cli("save", "me/a:v1", "-o", str(plain), models=src.root).returncode == 0
    with tarfile.open(plain) as tar:  # a .tar name gives an uncompressed tar
        assert "index.json" in tar.getnames()


def test_cli_bad_input_is_one_line_and_lands_nothing(tmp_path):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    small_model(src, "me/a:v1", seed=3)
    small_model(dst, "me/kept:v1", seed=4)
    good = tmp_path / "a.tar.zst"
    assert run_cli("save", "me/a:v1", "-o", str(good), models=src.root).returncode == 0
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    before = listing(dst.root)
    one_error_line(run_cli("load", str(cut), models=dst.root), 2, "truncated")
    one_error_line(run_cli("load", str(tmp_path / "nope.tar"), models=dst.root), 2, "no such file")
    one_error_line(run_cli("load", "/etc/hostname", models=dst.root), 2, "not a tar or tar.zst archive")
    assert listing(dst.root) == before

    one_error_line(run_cli("save", "me/missing:v1", "-o", str(tmp_path / "x.tar"), models=src.root), 3, "not found")
    assert not (tmp_path / "x.tar").exists() and not list(tmp_path.glob(".x.tar.tmp-*"))
    one_error_line(run_cli("save", "me/a:v1", "-o", "-", "--json", models=src.root), 2, "--json")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real `ollimg serve` whose store holds one model; OLLIMG_API_KEY is set."""
    root = tmp_path_factory.mktemp("archive-serve")
    srv = Server(root, OLLIMG_MAX_BODY="64KB")  # an archive is more: /api/load streams, the limit is not for it
    srv.env["OLLIMG_API_KEY"] = "s3cret"
    small_model(Store(root / "models"), "me/served:v1", seed=5)
    srv.start()
    yield srv
    srv.stop()


def test_save_and_load_through_the_server(served, tmp_path):
    here = Store(tmp_path / "local")  # the CLI's own store stays empty: everything goes through the server
    env = {**served.env, "OLLIMG_MODELS": str(here.root)}
    archive = tmp_path / "served.tar.zst"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*OLLIMG, *args], env=env, capture_output=True, text=True, timeout=TIMEOUT)

    saved = cli("save", "me/served:v1", "-o", str(archive))
    assert saved.returncode == 0, saved.stderr
    assert listing(here.root) == []
    server_store = Store(Path(served.env["OLLIMG_MODELS"]))
    loaded_here = Store(tmp_path / "check")
    from ollimg.archive import load

    load(loaded_here, archive)
    assert_same_model(server_store, loaded_here, "me/served:v1")

    # load through the server, under a new name: rewrite index.json's name in a plain tar
    plain = tmp_path / "renamed.tar"
    assert cli("save", "me/served:v1", "--format", "tar", "-o", str(plain)).returncode == 0
    renamed = _rename(plain.read_bytes(), "me/served:v1", "me/renamed:v2")
    plain.write_bytes(renamed)
    loaded = cli("load", str(plain), "--json")
    assert loaded.returncode == 0, loaded.stderr
    lines = [json.loads(line) for line in loaded.stdout.splitlines()]
    assert lines[-1]["status"] == "success" and lines[-1]["models"] == ["me/renamed:v2"]
    sent = [e for e in lines if e["status"] == "sending"]
    assert sent[0]["completed"] == 0 and sent[-1]["completed"] == sent[-1]["total"] == len(renamed)
    # then the server's own lines: every blob of the model is already in its store
    skipped = {e["digest"] for e in lines if e["status"].startswith("skipping ")}
    assert skipped == {d.digest for d in server_store.get(Name.parse("me/served:v1")).manifest.blobs()}
    assert {"status": "writing manifest"} in lines
    assert server_store.get(Name.parse("me/renamed:v2")).raw == server_store.get(Name.parse("me/served:v1")).raw
    shown = cli("load", str(plain))  # stderr is not a terminal: plain progress lines
    assert shown.returncode == 0 and shown.stdout.startswith("loaded 'me/renamed:v2'"), shown.stderr
    assert "loading: " in shown.stderr and "writing manifest" in shown.stderr, shown.stderr
    assert server_store.get(Name.parse("me/renamed:v2")).raw == server_store.get(Name.parse("me/served:v1")).raw

    # a layout directory is sent as a tar made on the fly
    layout = tmp_path / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", "-", "-C", str(layout)], input=_rename(renamed, "me/renamed:v2", "me/from-dir:v3"), check=True)
    assert cli("load", str(layout)).returncode == 0
    assert server_store.exists(Name.parse("me/from-dir:v3")) and listing(here.root) == []

    # bad input: one line, exit 2, the server's store unchanged
    before = listing(server_store.root)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(renamed[: len(renamed) // 2])
    one_error_line(cli("load", str(cut)), 2, "truncated")
    assert listing(server_store.root) == before

    # the API key guards both routes; the CLI with a wrong key gets one line
    assert httpx.post(served.url + "/api/save", json={"models": ["me/served:v1"]}).status_code == 401
    assert httpx.post(served.url + "/api/load", content=b"x" * 100).status_code == 401
    wrong = subprocess.run([*OLLIMG, "load", str(plain)], env={**env, "OLLIMG_API_KEY": "wrong"},
                           capture_output=True, text=True, timeout=TIMEOUT)
    one_error_line(wrong, 4, "API key")


def test_api_save_and_load_over_http(served, tmp_path):
    key = {"Authorization": "Bearer s3cret"}
    with httpx.stream("POST", served.url + "/api/save", json={"models": ["me/served:v1"]}, headers=key) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "application/zstd"
        data = response.read()
    plain = httpx.post(served.url + "/api/save", json={"models": ["me/served:v1"], "format": "tar"}, headers=key)
    assert plain.headers["content-type"] == "application/x-tar"
    assert int(plain.headers["content-length"]) == len(plain.content)
    import zstandard

    assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == plain.content
    missing = httpx.post(served.url + "/api/save", json={"models": ["me/none:v1"]}, headers=key)
    assert missing.status_code == 404 and missing.json()["code"] == "model_not_found"

    # streamed (the default): progress lines as for pull, the last one the result
    answer = httpx.post(served.url + "/api/load", content=data, headers=key)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-ndjson", answer.text
    lines = [json.loads(line) for line in answer.text.splitlines()]
    size = sum(d.size for d in Store(Path(served.env["OLLIMG_MODELS"])).get(Name.parse("me/served:v1")).manifest.blobs())
    assert lines[-1] == {"status": "success", "models": ["me/served:v1"], "new_bytes": 0, "deduplicated_bytes": size}
    skipped = [e for e in lines[:-1] if e["status"].startswith("skipping ")]
    blobs = Store(Path(served.env["OLLIMG_MODELS"])).get(Name.parse("me/served:v1")).manifest.blobs()
    assert {e["digest"] for e in skipped} == {d.digest for d in blobs}
    assert all(e["status"] == "skipping " + e["digest"][7:19] and e["completed"] == e["total"] for e in skipped)
    single = httpx.post(served.url + "/api/load?stream=false", content=data, headers=key)
    assert single.status_code == 200 and single.json() == lines[-1]

    # an error found once lines have gone out is a final error line; with stream=false a 400
    bad = httpx.post(served.url + "/api/load", content=data[:-100], headers=key)
    assert bad.status_code == 200
    last = json.loads(bad.text.splitlines()[-1])
    assert last["code"] == "invalid_model" and "truncated" in last["error"], bad.text
    bad = httpx.post(served.url + "/api/load?stream=false", content=data[:-100], headers=key)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_model" and "truncated" in bad.json()["error"]
    # what fails before the first blob is a 4xx before any line, streamed or not
    for junk in (b"x" * 100, b"\x1f\x8b" + b"\0" * 600, b""):
        refused = httpx.post(served.url + "/api/load", content=junk, headers=key)
        assert refused.status_code == 400 and refused.headers["content-type"] == "application/json", refused.text
        assert refused.json()["code"] == "invalid_model"


def test_api_load_streams_its_lines_while_the_archive_still_arrives(served, tmp_path):
    """A client that reads while it sends (curl does) sees the 200 and the first progress lines
    before it has sent the whole archive: the server loads as the bytes come."""
    here = Store(tmp_path / "here")
    write_model(here, "me/streamed:v1", pipeline_tensors(24, 12 * MiB, seed=7), {}, seed=7)
    data = b"".join(Archive(here, [Name.parse("me/streamed:v1")]).chunks())  # a plain tar, index.json first
    half = len(data) // 2  # several of the server's 1 MiB pieces
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as sock:
        sock.sendall(f"POST /api/load HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\n"
                     f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        sock.sendall(data[:half])
        early = b""
        while b'"status"' not in early:
            chunk = sock.recv(65536)
            assert chunk, early
            early += chunk
        assert early.startswith(b"HTTP/1.1 200 ") and b"application/x-ndjson" in early
        sock.sendall(data[half:])
        rest = early
        while not rest.endswith(b"0\r\n\r\n"):  # the chunked answer's end
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    assert b'"status":"success"' in rest and b'"models":["me/streamed:v1"]' in rest
    assert Store(Path(served.env["OLLIMG_MODELS"])).exists(Name.parse("me/streamed:v1"))


def _rename(tar_bytes: bytes, old: str, new: str) -> bytes:
    """The same plain tar with index.json naming the model `new`."""
    old_ref, new_ref = str(Name.parse(old)), str(Name.parse(new))
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for info in src.getmembers():
            body = src.extractfile(info).read() if info.isfile() else None
            if info.name == "index.json":
                body = body.replace(old_ref.encode(), new_ref.encode())
                info.size = len(body)
            dst.addfile(info, io.BytesIO(body) if body is not None else None)
    return out.getvalue()


# -- interoperability with skopeo and the docker-registry ---------------------------------------


def test_skopeo_moves_a_saved_model_into_a_registry_and_pull_gets_it(registry, tmp_path):
    src = Store(tmp_path / "src")
    model = small_model(src, "me/interop:v1", seed=6)
    ref = str(model.name)
    zst, plain = tmp_path / "m.tar.zst", tmp_path / "m.tar"
    assert run_cli("save", "me/interop:v1", "-o", str(zst), models=src.root).returncode == 0
    assert run_cli("save", "me/interop:v1", "-o", str(plain), models=src.root).returncode == 0

    layout = tmp_path / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", str(plain), "-C", str(layout)], check=True)  # GNU tar reads it too
    sources = {"archive": f"oci-archive:{zst}:{ref}", "dir": f"oci:{layout}:{ref}"}
    for kind, source in sources.items():
        target = f"{registry.host}/skopeo/{kind}:v1"
        skopeo("copy", "--preserve-digests", "--dest-tls-verify=false", source, f"docker://{target}")
        dst = Store(tmp_path / f"pulled-{kind}")
        pulled = run_cli("pull", target, models=dst.root)
        assert pulled.returncode == 0, pulled.stderr
        src.put_manifest(Name.parse(target), model.raw)
        assert_same_model(src, dst, target)  # manifest and every blob byte for byte


def test_a_pushed_model_copied_out_by_skopeo_loads(registry, tmp_path):
    src = Store(tmp_path / "src")
    name = f"{registry.host}/team/pushed:v1"
    small_model(src, name, seed=7)
    pushed = run_cli("push", name, models=src.root)
    assert pushed.returncode == 0, pushed.stderr

    layout = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{name}", f"oci:{layout}:{name}")
    archive = tmp_path / "skopeo.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(layout), "."], check=True)
    skopeo("copy", "--src-tls-verify=false", f"docker://{name}", f"oci-archive:{tmp_path / 'skopeo-archive.tar'}:{name}")

    for kind, source in {"tar": archive, "dir": layout, "oci-archive": tmp_path / "skopeo-archive.tar"}.items():
        dst = Store(tmp_path / f"loaded-{kind}")
        loaded = run_cli("load", str(source), models=dst.root)
        assert loaded.returncode == 0, (kind, loaded.stderr)
        assert loaded.stdout.splitlines()[0] == f"loaded '{Name.parse(name).display()}'"
        assert_same_model(src, dst, name)


def test_a_client_that_goes_away_mid_upload_lands_nothing(served, tmp_path):
    here = Store(tmp_path / "here")
    write_model(here, "me/abandoned:v1", pipeline_tensors(24, 12 * MiB, seed=8), {}, seed=8)
    data = b"".join(Archive(here, [Name.parse("me/abandoned:v1")]).chunks())
    server_store = Store(Path(served.env["OLLIMG_MODELS"]))
    before = listing(server_store.root)
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as sock:
        sock.sendall(f"POST /api/load HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data[: len(data) // 2])
        while b'"status"' not in sock.recv(65536):
            pass
    # The loader may still be writing the blobs it had read when the client left; it holds the
    # store's shared lock until it has cleaned up, so the exclusive lock (as `ollimg rm` takes it)
    # waits for that; a loader that never lets go ends in the suite's timeout.
    with server_store.lock(exclusive=True):
        assert listing(server_store.root) == before  # no model, no blob, no temp file
    ok = httpx.post(served.url + "/api/load?stream=false", content=data, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["models"] == ["me/abandoned:v1"], ok.text
