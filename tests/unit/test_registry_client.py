"""The registry client's auth, retries and URLs, against httpx.MockTransport fakes."""

from __future__ import annotations

import base64
import stat

import httpx
import pytest

from ollimg import config
from ollimg.errors import AuthError, RegistryError
from ollimg.registry import auth as auth_module
from ollimg.registry.auth import Credentials, credentials_for, parse_challenge, remove_credentials, save_credentials
from ollimg.hosts import is_loopback
from ollimg.registry.client import Registry, check, resolve, retrying

SECRET = "pa55-word-xyz"


def registry_with(handler, credentials: Credentials | None = None, host: str = "registry.test") -> Registry:
    registry = Registry(host, credentials=credentials)
    registry.http.close()
    registry.http = httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=True)
    return registry


@pytest.fixture(autouse=True)
def no_tokens(monkeypatch):
    monkeypatch.setattr(auth_module, "_tokens", {})
    monkeypatch.delenv("OLLIMG_REGISTRY_USER", raising=False)
    monkeypatch.delenv("OLLIMG_REGISTRY_PASSWORD", raising=False)


def test_https_by_default_plain_http_for_loopback_or_insecure():
    assert Registry("ghcr.io").base == "https://ghcr.io"
    assert Registry("localhost:5000").base == "http://localhost:5000"
    assert Registry("127.0.0.1:5000").base == "http://127.0.0.1:5000"
    assert Registry("[::1]:5000").base == "http://[::1]:5000"
    assert Registry("registry.lan:5000", insecure=True).base == "http://registry.lan:5000"
    assert not is_loopback("127.example.com:5000")  # a host name, not an address: https
    assert Registry("10.0.0.5:5000").base == "https://10.0.0.5:5000"


def test_parse_challenge():
    scheme, params = parse_challenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_basic_challenge_answered_and_remembered():
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != Credentials("u", SECRET).basic():
            return httpx.Response(401, headers={"www-authenticate": 'Basic realm="r"'})
        return httpx.Response(200)

    registry = registry_with(handler, Credentials("u", SECRET))
    assert registry.send("GET", "https://registry.test/v2/").status_code == 200
    assert registry.send("GET", "https://registry.test/v2/").status_code == 200
    assert seen[0] is None and seen[1:] == [Credentials("u", SECRET).basic()] * 2


def test_basic_without_or_with_wrong_credentials_is_a_clear_auth_error():
    def handler(request):
        return httpx.Response(401, headers={"www-authenticate": 'Basic realm="r"'})

    with pytest.raises(AuthError, match="registry registry.test requires authentication; run: ollimg login registry.test"):
        registry_with(handler).send("GET", "https://registry.test/v2/")
    with pytest.raises(AuthError, match="refused the credentials") as info:
        registry_with(handler, Credentials("u", SECRET)).send("GET", "https://registry.test/v2/")
    assert SECRET not in str(info.value) and "u" not in str(info.value).split("registry.test")[0]
    assert SECRET not in repr(Credentials("u", SECRET))
    assert info.value.exit_code == 4


def test_bearer_flow_fetches_one_token_and_reuses_it():
    token_calls = []

    def handler(request):
        if request.url.host == "auth.test":
            token_calls.append(request)
            assert request.headers["authorization"] == "Basic " + base64.b64encode(f"u:{SECRET}".encode()).decode()
            return httpx.Response(200, json={"token": "tok-1", "expires_in": 300})
        if request.headers.get("authorization") == "Bearer tok-1":
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"www-authenticate":
                              'Bearer realm="https://auth.test/token",service="reg",scope="repository:a/b:pull"'})

    registry = registry_with(handler, Credentials("u", SECRET))
    for _ in range(3):
        assert registry.send("GET", "https://registry.test/v2/a/b/manifests/x").status_code == 200
    assert len(token_calls) == 1
    assert token_calls[0].url.params.get("service") == "reg"
    assert token_calls[0].url.params.get_list("scope") == ["repository:a/b:pull"]
    # A second Registry in the same process reuses the cached token for the same scope.
    again = registry_with(handler, Credentials("u", SECRET))
    assert again.send("GET", "https://registry.test/v2/a/b/manifests/x").status_code == 200
    assert len(token_calls) == 1


def test_bearer_two_scopes_are_sent_separately_and_anonymous_works():
    scopes = []

    def handler(request):
        if request.url.host == "auth.test":
            scopes.append(request.url.params.get_list("scope"))
            assert "authorization" not in request.headers
            return httpx.Response(200, json={"access_token": "anon"})
        if request.headers.get("authorization") == "Bearer anon":
            return httpx.Response(201)
        return httpx.Response(401, headers={"www-authenticate":
                              'Bearer realm="https://auth.test/token",scope="repository:a/b:pull,push repository:c/d:pull"'})

    registry = registry_with(handler)
    assert registry.send("POST", "https://registry.test/v2/a/b/blobs/uploads/").status_code == 201
    assert scopes == [["repository:a/b:pull,push", "repository:c/d:pull"]]


def test_bearer_token_refused_by_token_service():
    def handler(request):
        if request.url.host == "auth.test":
            return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED", "message": SECRET}]})
        return httpx.Response(401, headers={"www-authenticate": 'Bearer realm="https://auth.test/token"'})

    with pytest.raises(AuthError, match="refused the credentials") as info:
        registry_with(handler, Credentials("u", SECRET)).send("GET", "https://registry.test/v2/")
    assert SECRET not in str(info.value)


def test_retries_transient_errors_but_never_4xx():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("refused")
        return "ok"

    assert retrying(flaky, "registry x") == "ok" and len(calls) == 3

    answers = iter([503, 429, 200])

    def handler(request):
        return httpx.Response(next(answers), headers={"retry-after": "0"})

    registry = registry_with(handler)
    response = retrying(lambda: check(registry.send("GET", "https://registry.test/v2/"), "ping"), "registry x")
    assert response.status_code == 200

    count = []

    def not_found(request):
        count.append(1)
        return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]})

    registry = registry_with(not_found)
    with pytest.raises(RegistryError, match="HTTP 404 \\(BLOB_UNKNOWN: blob unknown\\)"):
        retrying(lambda: check(registry.send("GET", "https://registry.test/v2/a/b/blobs/x"), "pull blob"), "registry x")
    assert len(count) == 1


def test_gives_up_after_the_last_try(monkeypatch):
    monkeypatch.setattr("ollimg.registry.client.ATTEMPTS", 2)

    def down():
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with pytest.raises(RegistryError, match="cannot reach registry x.*gave up after 2 tries"):
        retrying(down, "registry x")


def test_upload_location_keeps_its_query_when_digest_is_added():
    def handler(request):
        return httpx.Response(202, headers={"location": "/v2/a/b/blobs/uploads/uuid?_state=abc%3D%3D"})

    response = registry_with(handler).send("POST", "https://registry.test/v2/a/b/blobs/uploads/")
    url = resolve(response).copy_merge_params({"digest": "sha256:" + "0" * 64})
    assert url.host == "registry.test" and url.path == "/v2/a/b/blobs/uploads/uuid"
    assert url.params["_state"] == "abc==" and url.params["digest"] == "sha256:" + "0" * 64


def test_credentials_file_is_private_and_env_wins(monkeypatch):
    save_credentials("https://Reg.Example:5000/", Credentials("alice", SECRET))
    path = config.credentials_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials_for("reg.example:5000") == Credentials("alice", SECRET)
    assert credentials_for("other.example") is None
    monkeypatch.setenv("OLLIMG_REGISTRY_USER", "bob")
    monkeypatch.setenv("OLLIMG_REGISTRY_PASSWORD", "env-pass")
    assert credentials_for("reg.example:5000") == Credentials("alice", SECRET)  # env: the OLLIMG_REGISTRY host only
    monkeypatch.setenv("OLLIMG_REGISTRY", "reg.example:5000")
    assert credentials_for("reg.example:5000") == Credentials("bob", "env-pass")
    monkeypatch.delenv("OLLIMG_REGISTRY_USER")
    assert remove_credentials("reg.example:5000") and not remove_credentials("reg.example:5000")
    assert credentials_for("reg.example:5000") is None


def test_a_host_that_does_not_resolve_fails_at_once(monkeypatch):
    """No retries for a name the resolver says does not exist (a typo); a resolver that is only
    unreachable for now (EAI_AGAIN) is retried like any connection error."""
    import socket
    import time

    calls = []

    def no_such_name(*args, **kwargs):
        calls.append(args[0])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    started = time.monotonic()
    with pytest.raises(RegistryError, match="does not resolve") as failed:
        Registry("registry.typo.example").ping()
    assert "gave up" not in str(failed.value) and time.monotonic() - started < 1.0
    assert calls == ["registry.typo.example"]
    calls.clear()

    def resolver_down(*args, **kwargs):
        calls.append(args[0])
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", resolver_down)
    monkeypatch.setattr("ollimg.registry.client.ATTEMPTS", 2)
    with pytest.raises(RegistryError, match="gave up after 2 tries"):
        Registry("registry.typo.example").ping()
    assert len(calls) == 2


def test_env_credentials_go_only_to_the_configured_registry(monkeypatch):
    """Issue 13: OLLIMG_REGISTRY_USER/PASSWORD were sent to any host that answered 401."""
    monkeypatch.setenv("OLLIMG_REGISTRY", "good.example")
    monkeypatch.setenv("OLLIMG_REGISTRY_USER", "bob")
    monkeypatch.setenv("OLLIMG_REGISTRY_PASSWORD", SECRET)
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, headers={"www-authenticate": 'Basic realm="give me your password"'})

    attacker = registry_with(handler, host="attacker.example")
    assert attacker.auth.credentials is None
    with pytest.raises(AuthError, match="requires authentication"):
        attacker.send("GET", "https://attacker.example/v2/")
    assert seen == [None]
    assert registry_with(handler, host="Good.Example").auth.credentials == Credentials("bob", SECRET)


def test_login_credentials_go_only_to_their_host(monkeypatch):
    save_credentials("mine.example", Credentials("alice", SECRET))
    assert credentials_for("mine.example") == Credentials("alice", SECRET)
    assert credentials_for("mine.example.attacker.example") is None and credentials_for("other.example") is None


def test_authorization_stays_on_the_registry_origin():
    """An upload Location (or any URL) on another host never gets the registry's Authorization."""
    seen = {}
    basic = Credentials("u", SECRET).basic()

    def handler(request):
        seen.setdefault(request.url.host, []).append(request.headers.get("authorization"))
        if request.url.host == "registry.test" and request.headers.get("authorization") != basic:
            return httpx.Response(401, headers={"www-authenticate": 'Basic realm="r"'})
        if request.url.host == "registry.test":
            return httpx.Response(202, headers={"location": "https://elsewhere.example/upload?x=1"})
        return httpx.Response(401, headers={"www-authenticate": 'Basic realm="r"'})

    registry = registry_with(handler, credentials=Credentials("u", SECRET))
    response = registry.send("POST", "https://registry.test/v2/a/b/blobs/uploads/")
    elsewhere = registry.send("PUT", resolve(response), content=b"data")
    assert elsewhere.status_code == 401  # answered as is: no credentials offered to another host
    assert seen["elsewhere.example"] == [None]
    assert registry.owns("https://registry.test/v2/") and not registry.owns("http://registry.test/v2/")


def test_token_realm_on_another_host_gets_credentials_only_over_https():
    def handler(request):
        if request.url.host == "registry.test" and not request.headers.get("authorization"):
            return httpx.Response(401, headers={"www-authenticate": 'Bearer realm="http://tokens.example/token",service="s"'})
        return httpx.Response(200, json={"token": "t"})

    registry = registry_with(handler, credentials=Credentials("u", SECRET))
    with pytest.raises(AuthError, match="only over HTTPS"):
        registry.send("GET", "https://registry.test/v2/")
