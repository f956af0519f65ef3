"""pull and push against a real docker-registry (distribution 2.8), through the real CLI where it matters."""

from __future__ import annotations

import base64
import importlib
import json
import signal
import stat
import subprocess

import pytest

from ollimg.errors import AuthError, DigestMismatch
from ollimg.manifest import Name, Store
from ollimg.registry import pull, push
from tests.conftest import OLLIMG, cli_env
from tests.integration.conftest import USERS
from tests.synthetic_model import pipeline_tensors, write_model

pull_module = importlib.import_module("ollimg.registry.pull")  # the module; `ollimg.registry.pull` is the function

MiB = 1 << 20
BIG = ("BF16", (36 * 1024, 1024))  # 72 MiB: above pull.LARGE, so fetched in ranges and resumable


def run_cli(*args: str, models, input: str | None = None, timeout: float = 60, **env) -> subprocess.CompletedProcess:
    return subprocess.run([*OLLIMG, *args], env=cli_env(OLLIMG_MODELS=str(models), **env), input=input,
                          capture_output=True, text=True, timeout=timeout)


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def assert_same_model(a: Store, b: Store, name: str) -> None:
    ma, mb = a.get(Name.parse(name)), b.get(Name.parse(name))
    assert mb.raw == ma.raw  # byte for byte
    for desc in ma.manifest.blobs():
        assert b.blobs.path(desc.digest).read_bytes() == a.blobs.path(desc.digest).read_bytes(), desc.digest
    assert b.blobs.temp_files() == []


def small_model(store: Store, name: str, seed: int, count: int = 24):
    return write_model(store, name, pipeline_tensors(count, 2 * MiB, seed), {"model_index.json": b'{"_class_name": "Synthetic"}'}, seed)


def test_push_then_pull_into_empty_store(registry, proxy_for, tmp_path):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{registry.host}/team/roundtrip:v1"
    model = small_model(src, name, seed=1)

    pushed = run_cli("push", "--json", name, models=src.root)
    assert pushed.returncode == 0, pushed.stderr
    statuses = [e["status"] for e in events(pushed.stdout)]
    assert statuses[-2:] == ["pushing manifest", "success"]
    assert sum(s.startswith("pushing ") and s != "pushing manifest" for s in statuses) >= len(model.manifest.blobs())

    proxy = proxy_for(registry)
    via = f"{proxy.host}/team/roundtrip:v1"
    src.put_manifest(Name.parse(via), model.raw)  # the same model under the proxy's host, for comparing
    pulled = run_cli("pull", "--json", via, models=dst.root)
    assert pulled.returncode == 0, pulled.stderr
    assert events(pulled.stdout)[0] == {"status": "pulling manifest"}
    assert events(pulled.stdout)[-1] == {"status": "success"}
    assert_same_model(src, dst, via)
    assert {h.path.rsplit("/", 1)[1] for h in proxy.hits if "/blobs/" in h.path} == {d.digest for d in model.manifest.blobs()}

    # Everything present: the manifest is fetched again, no blob is transferred.
    proxy.hits.clear()
    again = run_cli("pull", "--json", via, models=dst.root)
    assert again.returncode == 0, again.stderr
    assert [h for h in proxy.hits if "/blobs/" in h.path] == []
    blob_events = [e for e in events(again.stdout) if "digest" in e]
    assert blob_events and all(e["status"].startswith("skipping ") for e in blob_events)

    # Pushing again: every blob is found with HEAD and skipped.
    repushed = run_cli("push", "--json", name, models=src.root)
    assert repushed.returncode == 0, repushed.stderr
    blob_events = [e for e in events(repushed.stdout) if "digest" in e]
    assert blob_events and all(e["status"].startswith("skipping ") for e in blob_events)


def test_plain_progress_lines_when_stderr_is_not_a_terminal(registry, tmp_path):
    src = Store(tmp_path / "src")
    name = f"{registry.host}/team/plain:v1"
    small_model(src, name, seed=2)
    pushed = run_cli("push", name, models=src.root)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout == ""
    lines = pushed.stderr.splitlines()
    assert lines[0] == "retrieving manifest" and lines[-1] == "success"
    assert any(line.startswith("pushing ") and "blobs" in line and "MB" in line for line in lines)
    pulled = run_cli("pull", name, models=tmp_path / "dst")
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stderr.splitlines()[-3:] == ["verifying sha256 digest", "writing manifest", "success"]


def test_push_mounts_blobs_from_another_repository(registry, tmp_path):
    store = Store(tmp_path / "src")
    first = f"{registry.host}/team/mount-a:v1"
    model = small_model(store, first, seed=3)
    push(store, first)
    second = f"{registry.host}/other/mount-b:v1"
    store.put_manifest(Name.parse(second), model.raw)
    seen = []
    push(store, second, on_progress=seen.append)
    blob_statuses = {p.status.split()[0] for p in seen if p.digest}
    assert blob_statuses == {"mounting"}
    pulled = pull(Store(tmp_path / "dst"), second)
    assert pulled.raw == model.raw


def test_killed_pull_resumes_where_it_stopped(registry, proxy_for, tmp_path):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    tensors = pipeline_tensors(30, 1 * MiB, seed=4)
    tensors["transformer/big.weight"] = BIG
    name = f"{registry.host}/team/resume:v1"
    model = write_model(src, name, tensors, {}, seed=4)
    push(src, name)
    big = next(d for d in model.manifest.layers if d.size > 64 * MiB)

    proxy = proxy_for(registry, throttle=4 * MiB)
    via = f"{proxy.host}/team/resume:v1"
    process = subprocess.Popen([*OLLIMG, "pull", "--json", "--concurrency", "8", via], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=cli_env(OLLIMG_MODELS=str(dst.root)))
    try:
        for line in process.stdout:
            event = json.loads(line)
            # Stop once part of the big blob is here and the small blobs have landed (every 0.5 s).
            if event.get("digest") == big.digest and event.get("completed", 0) >= 12 * MiB and len(dst.blobs.digests()) >= 10:
                break
        else:
            pytest.fail(f"the pull ended before the big blob was under way: {process.stderr.read()}")
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(10)

    assert not dst.exists(Name.parse(via))  # no model after a killed pull
    landed = {d.digest for d in model.manifest.blobs() if dst.blobs.has(d.digest, d.size)}
    assert big.digest not in landed and len(landed) >= 10
    partial = dst.blobs.partial_path(big.digest)
    record = json.loads(partial.with_name(partial.name + ".json").read_text())
    already = sum(done for _, _, done in record["parts"])
    assert already >= 8 * MiB

    proxy.throttle = None
    proxy.hits.clear()
    resumed = run_cli("pull", "--json", via, models=dst.root)
    assert resumed.returncode == 0, resumed.stderr
    fetched = {h.path.rsplit("/", 1)[1] for h in proxy.hits if "/blobs/" in h.path}
    assert not fetched & landed  # blobs that had landed are not fetched again
    big_hits = proxy.blob_hits(big.digest)
    starts = [int(h.range.split("=")[1].split("-")[0]) for h in big_hits]
    part_starts = {start + done for start, _, done in record["parts"] if done}
    assert part_starts <= set(starts)  # each started part continues from its byte
    assert sum(h.sent for h in big_hits) <= big.size - already
    first = next(e for e in events(resumed.stdout) if e.get("digest") == big.digest)
    assert first["completed"] >= already  # progress honestly starts from the bytes already here
    # Nothing is left: not the resumed partial (now a blob), nor the temp files of the small blobs
    # that were in flight when the process died (removed once no writer runs: tests/integration/test_leftovers.py).
    assert dst.blobs.temp_files() == []
    src.put_manifest(Name.parse(via), model.raw)
    assert_same_model(src, dst, via)


def test_corrupt_blob_in_registry_lands_nothing(registry, tmp_path):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{registry.host}/team/corrupt:v1"
    model = small_model(src, name, seed=5)
    push(src, name)
    victim = model.manifest.tensor_layers()[-1]
    data = registry.blob_data(victim.digest)
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF  # same size, one byte off
    data.write_bytes(bytes(raw))

    result = run_cli("pull", name, models=dst.root)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("Error: blob " + victim.digest) and "failed verification" in message
    assert "model was not saved" in message
    assert not dst.exists(Name.parse(name))
    assert not dst.blobs.has(victim.digest)
    assert dst.blobs.temp_files() == []


def test_corrupt_large_blob_lands_nothing(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(pull_module, "LARGE", 1 * MiB)
    monkeypatch.setattr(pull_module, "PART_MIN", 256 << 10)
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{registry.host}/team/corrupt-large:v1"
    model = write_model(src, name, {"w": ("F32", (1024, 1024))}, {}, seed=6)
    push(src, name)
    victim = model.manifest.layers[0]
    data = registry.blob_data(victim.digest)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(DigestMismatch, match="failed verification"):
        pull(dst, name)
    assert not dst.exists(Name.parse(name))
    assert not dst.blobs.has(victim.digest)
    assert dst.blobs.temp_files() == []


def test_ranges_ignored_and_transient_errors(registry, proxy_for, tmp_path, monkeypatch):
    """A server that answers 200 to Range requests, and 503s on the first blob GETs: the pull still lands."""
    monkeypatch.setattr(pull_module, "LARGE", 1 * MiB)
    monkeypatch.setattr(pull_module, "PART_MIN", 256 << 10)
    src = Store(tmp_path / "src")
    name = f"{registry.host}/team/norange:v1"
    model = write_model(src, name, {"w": ("F32", (1024, 1024)), "b": ("F32", (1024,))}, {}, seed=7)
    push(src, name)
    proxy = proxy_for(registry, ranges=False, fail_blob_gets=3)
    via = f"{proxy.host}/team/norange:v1"
    dst = Store(tmp_path / "dst")
    assert pull(dst, via, concurrency=4).raw == model.raw
    assert [h.status for h in proxy.hits].count(503) == 3
    src.put_manifest(Name.parse(via), model.raw)
    assert_same_model(src, dst, via)


def test_basic_auth_login_and_wrong_credentials(auth_registry, tmp_path):
    host = auth_registry.host
    src = Store(tmp_path / "src")
    name = f"{host}/team/private:v1"
    model = small_model(src, name, seed=8)
    wrong = "not-the-password-7f3a"
    data_home = str(tmp_path / "data")

    anonymous = run_cli("push", name, models=src.root, XDG_DATA_HOME=data_home)
    assert anonymous.returncode == 4
    assert f"registry {host} requires authentication; run: ollimg login {host}" in anonymous.stderr

    refused = run_cli("login", host, "-u", "alice", "--password-stdin", input=wrong + "\n", models=src.root, XDG_DATA_HOME=data_home)
    assert refused.returncode == 4
    assert "refused the credentials" in refused.stderr
    assert wrong not in refused.stderr + refused.stdout
    assert not list((tmp_path / "data").rglob("registry-credentials.json"))

    env_wrong = run_cli("pull", name, models=tmp_path / "dst", XDG_DATA_HOME=data_home,
                        OLLIMG_REGISTRY_USER="alice", OLLIMG_REGISTRY_PASSWORD=wrong, OLLIMG_REGISTRY=host)
    assert env_wrong.returncode == 4 and "refused the credentials" in env_wrong.stderr
    assert wrong not in env_wrong.stderr + env_wrong.stdout

    ok = run_cli("login", host, "-u", "alice", "--password-stdin", input=USERS["alice"] + "\n", models=src.root, XDG_DATA_HOME=data_home)
    assert ok.returncode == 0, ok.stderr
    (stored,) = (tmp_path / "data").rglob("registry-credentials.json")
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600

    pushed = run_cli("--debug", "push", name, models=src.root, XDG_DATA_HOME=data_home)
    assert pushed.returncode == 0, pushed.stderr
    basic = base64.b64encode(f"alice:{USERS['alice']}".encode()).decode()
    for secret in (USERS["alice"], basic):
        assert secret not in pushed.stderr + pushed.stdout  # not even in debug logs
    pulled = run_cli("pull", name, models=tmp_path / "dst", XDG_DATA_HOME=data_home)
    assert pulled.returncode == 0, pulled.stderr
    assert Store(tmp_path / "dst").get(Name.parse(name)).raw == model.raw

    out = run_cli("logout", host, models=src.root, XDG_DATA_HOME=data_home)
    assert out.returncode == 0 and "logged out" in out.stderr
    again = run_cli("pull", name, models=tmp_path / "dst2", XDG_DATA_HOME=data_home)
    assert again.returncode == 4


def test_bearer_token_flow(registry, proxy_for, tmp_path, monkeypatch):
    """A token registry in front of the real one: 401 challenge -> /token with Basic -> scoped Bearer."""
    proxy = proxy_for(registry, users={"bob": "token-pass-42"})
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{proxy.host}/team/tokens:v1"
    model = small_model(src, name, seed=9)

    with pytest.raises(AuthError, match=f"registry {proxy.host} requires authentication"):
        push(src, name)

    monkeypatch.setenv("OLLIMG_REGISTRY", proxy.host)  # the environment's credentials go to this host only
    monkeypatch.setenv("OLLIMG_REGISTRY_USER", "bob")
    monkeypatch.setenv("OLLIMG_REGISTRY_PASSWORD", "wrong-token-pass")
    with pytest.raises(AuthError, match="refused the credentials") as info:
        pull(dst, name)
    assert "wrong-token-pass" not in str(info.value)

    monkeypatch.setenv("OLLIMG_REGISTRY_PASSWORD", "token-pass-42")
    proxy.token_requests.clear()
    push(src, name)
    scopes = {s for r in proxy.token_requests for s in r["scopes"]}
    assert "repository:team/tokens:pull,push" in scopes
    assert all(r["basic"] and r["service"] == "test-registry" for r in proxy.token_requests)
    assert len(proxy.token_requests) <= 3  # tokens are cached, not fetched per request

    # A mount from another repository asks for a token covering both repositories.
    second = f"{proxy.host}/other/tokens-copy:v1"
    src.put_manifest(Name.parse(second), model.raw)
    seen = []
    push(src, second, on_progress=seen.append)
    assert {p.status.split()[0] for p in seen if p.digest} == {"mounting"}
    assert any("repository:team/tokens:pull" in r["scopes"] for r in proxy.token_requests)

    assert pull(dst, name).raw == model.raw

    # `ollimg login` against the token registry: the token flow checks the credentials.
    data_home = str(tmp_path / "data")
    refused = run_cli("login", proxy.host, "-u", "bob", "--password-stdin", input="nope\n", models=dst.root,
                      XDG_DATA_HOME=data_home, OLLIMG_REGISTRY_USER="", OLLIMG_REGISTRY_PASSWORD="")
    assert refused.returncode == 4 and "refused the credentials" in refused.stderr
    ok = run_cli("login", proxy.host, "-u", "bob", "--password-stdin", input="token-pass-42\n", models=dst.root,
                 XDG_DATA_HOME=data_home, OLLIMG_REGISTRY_USER="", OLLIMG_REGISTRY_PASSWORD="")
    assert ok.returncode == 0, ok.stderr


def test_ctrl_c_stops_a_pull_cleanly(registry, proxy_for, tmp_path):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{registry.host}/team/interrupt:v1"
    model = write_model(src, name, {"big": BIG, "small": ("F32", (64,))}, {}, seed=10)
    push(src, name)
    big = next(d for d in model.manifest.layers if d.size > 64 * MiB)
    proxy = proxy_for(registry, throttle=4 * MiB)
    via = f"{proxy.host}/team/interrupt:v1"
    process = subprocess.Popen([*OLLIMG, "pull", "--json", via], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=cli_env(OLLIMG_MODELS=str(dst.root)))
    for line in process.stdout:
        if json.loads(line).get("completed", 0) >= 4 * MiB:
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "Error: interrupted"
    assert not dst.exists(Name.parse(via))
    partial = dst.blobs.partial_path(big.digest)
    record = json.loads(partial.with_name(partial.name + ".json").read_text())
    assert sum(done for _, _, done in record["parts"]) >= 4 * MiB


def test_chunked_upload_of_large_blobs(registry, tmp_path, monkeypatch):
    push_module = importlib.import_module("ollimg.registry.push")
    monkeypatch.setattr(push_module, "CHUNKED", 1 * MiB)
    monkeypatch.setattr(push_module, "CHUNK", 300 << 10)  # not a divisor of the size: a short last chunk
    src = Store(tmp_path / "src")
    name = f"{registry.host}/team/chunked:v1"
    model = write_model(src, name, {"w": ("F32", (400, 1024)), "b": ("F32", (8,))}, {}, seed=11)
    seen = []
    push(src, name, on_progress=seen.append)
    big = model.manifest.layers[0]
    done = [p.completed for p in seen if p.digest == big.digest]
    assert done[-1] == big.size and done == sorted(done)
    dst = Store(tmp_path / "dst")
    assert pull(dst, name).raw == model.raw
    assert dst.blobs.path(big.digest).read_bytes() == src.blobs.path(big.digest).read_bytes()


def test_resumed_partial_with_bad_bytes_is_fetched_again(registry, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pull_module, "LARGE", 1 * MiB)
    monkeypatch.setattr(pull_module, "PART_MIN", 256 << 10)
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{registry.host}/team/bad-partial:v1"
    model = write_model(src, name, {"w": ("F32", (1024, 1024))}, {}, seed=12)
    push(src, name)
    big = model.manifest.layers[0]
    partial = dst.blobs.partial_path(big.digest)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * big.size)  # "landed" bytes that are wrong, as after a crash that lost them
    partial.with_name(partial.name + ".json").write_text(json.dumps({"size": big.size, "parts": [[0, big.size, big.size // 2]]}))
    with caplog.at_level("INFO", logger="ollimg.registry.pull"):
        assert pull(dst, name).raw == model.raw
    assert "resuming" in caplog.text and "fetching it again from scratch" in caplog.text
    assert dst.blobs.path(big.digest).read_bytes() == src.blobs.path(big.digest).read_bytes()
    assert dst.blobs.temp_files() == []


def test_push_and_pull_over_https(tls_registry, tmp_path, monkeypatch):
    """HTTPS end to end, blob bodies included (they come over direct.py's own TLS connections): an
    untrusted certificate is one clear error at once, trusted through SSL_CERT_FILE all works."""
    from ollimg.errors import RegistryError
    from ollimg.registry.direct import DirectPool

    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(var, raising=False)
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{tls_registry.host}/team/tls:v1"
    model = small_model(src, name, seed=11)

    with pytest.raises(RegistryError, match="TLS certificate is not trusted.*SSL_CERT_FILE") as failed:
        push(src, name, insecure=False)
    assert "gave up" not in str(failed.value)  # not retried

    monkeypatch.setenv("SSL_CERT_FILE", str(tls_registry.certificate))
    push(src, name, insecure=False)
    direct = []
    real_get = DirectPool.get
    monkeypatch.setattr(DirectPool, "get", lambda pool, *a: direct.append(pool.scheme) or real_get(pool, *a))
    pull(dst, name, insecure=False)
    assert_same_model(src, dst, name)
    assert direct and set(direct) == {"https"} and len(direct) >= len(model.manifest.blobs())
