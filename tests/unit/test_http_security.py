"""Issue 13's HTTP findings as regression tests (fake runtime, in-process ASGI): the API key covers
every route, bodies are limited before they are read whole, errors carry no traceback or server path,
and every request leaves an access log line."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from ollimg.server.access import needs_key
from tests.unit.asgi import BASE, call, fake_app

KEY = "s3cret-key"


def _every_route(app) -> list[tuple[str, str]]:
    """(method, path) of every operation in the OpenAPI document, plus the documentation pages."""
    found = [(m.upper(), p.replace("{", "").replace("}", "")) for p, ops in app.openapi()["paths"].items() for m in ops]
    return found + [("GET", p) for p in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect")]


def test_api_key_covers_every_route_but_the_page_shell(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLIMG_API_KEY", KEY)
    app, *_ = fake_app(tmp_path)
    routes = _every_route(app)
    assert ("POST", "/sdapi/v1/txt2img") in routes and ("GET", "/openapi.json") in routes and ("GET", "/docs") in routes

    async def fn(c, _):
        return [(m, p, await c.request(m, p, json={})) for m, p in routes]

    for method, path, r in call(tmp_path, fn):
        if needs_key(method, path):
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
        else:
            assert (method, path) in (("GET", "/"), ("HEAD", "/")), (method, path)
    assert not needs_key("GET", "/") and not needs_key("GET", "/web/app.js") and not needs_key("OPTIONS", "/api/tags")
    assert needs_key("POST", "/") and needs_key("GET", "/redoc") and needs_key("GET", "/sdapi/v1/sd-models")


def test_sdapi_txt2img_needs_the_key(tmp_path, monkeypatch):
    """The red-team finding: POST /sdapi/v1/txt2img without a key generated."""
    monkeypatch.setenv("OLLIMG_API_KEY", KEY)

    async def fn(c, factory):
        body = {"prompt": "a cat", "override_settings": {"sd_model_checkpoint": "tiny"}}
        without = await c.post("/sdapi/v1/txt2img", json=body)
        with_key = await c.post("/sdapi/v1/txt2img", json=body, headers={"Authorization": f"Bearer {KEY}"})
        schema = await c.get("/openapi.json")
        return without, with_key, schema, len(factory.made)

    without, with_key, schema, runtimes = call(tmp_path, fn)
    assert without.status_code == 401 and schema.status_code == 401
    assert with_key.status_code == 200 and with_key.json()["images"] and runtimes == 1


def test_body_limit_by_length_and_while_streaming(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLIMG_MAX_BODY", "2KB")

    async def chunks():
        for _ in range(10):
            yield b"x" * 1000

    async def fn(c, _):
        declared = await c.post("/api/show", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"})
        chunked = await c.post("/api/show", content=chunks(), headers={"content-type": "application/json"})
        small = await c.post("/api/show", json={"model": "tiny"})
        return declared, chunked, small

    declared, chunked, small = call(tmp_path, fn)
    for r in (declared, chunked):
        assert r.status_code == 413, r.text
        assert r.json()["code"] == "body_too_large" and "OLLIMG_MAX_BODY" in r.json()["error"]
    assert small.status_code == 200


def test_errors_carry_no_traceback_or_server_path(tmp_path, monkeypatch):
    app, store, scheduler, factory = fake_app(tmp_path)
    monkeypatch.setenv("OLLIMG_MODELS", str(store.root))
    factory.fail_load = True
    traceback = (f'Traceback (most recent call last):\n  File "{store.root}/x.py", line 3, in load\n'
                 f"RuntimeError: cannot open {store.root}/blobs/sha256-abc")

    import tests.unit.fake_runtime as fake

    def start(self, timeout):
        from ollimg.errors import RuntimeFailed

        raise RuntimeFailed("runtime failed to load the model", stderr_tail=traceback)

    monkeypatch.setattr(fake.FakeRuntime, "start", start)
    transport = httpx.ASGITransport(app)

    async def main():
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
            try:
                return await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
            finally:
                await scheduler.close()

    r = asyncio.run(main())
    message = r.json()["error"]
    assert r.status_code == 500 and "RuntimeError: cannot open $OLLIMG_MODELS/blobs" in message
    assert "Traceback" not in message and str(store.root) not in message and "x.py" not in message


def test_unexpected_exception_shows_only_its_kind(tmp_path, monkeypatch, caplog):
    import ollimg.server.routes.models as routes

    def boom(model):
        raise ValueError(f"secret detail at {tmp_path}/private")

    monkeypatch.setattr(routes.models, "info", boom)
    app, _, scheduler, _ = fake_app(tmp_path)

    async def main():
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
            try:
                return await c.post("/api/show", json={"model": "tiny"})
            finally:
                await scheduler.close()

    r = asyncio.run(main())
    assert r.status_code == 500 and r.json() == {
        "error": "internal error (ValueError); the server log has the details", "code": "internal"}
    assert "secret detail" in caplog.text  # the traceback is in the server log


def test_access_log_has_one_line_per_request(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ollimg.access")

    async def fn(c, _):
        await c.get("/api/tags?token=hidden")
        await c.post("/api/show", json={"model": "nope"})

    call(tmp_path, fn)
    lines = [r.getMessage() for r in caplog.records if r.name == "ollimg.access"]
    assert len(lines) == 2
    assert '"GET /api/tags" 200' in lines[0] and "hidden" not in lines[0]
    assert '"POST /api/show" 404' in lines[1]


@pytest.mark.parametrize("path", ["/sdapi/v1/sd-models", "/api/show"])
def test_answers_hold_no_server_paths(tmp_path, path):
    async def fn(c, _):
        if path == "/api/show":
            return await c.post(path, json={"model": "tiny", "verbose": True})
        return await c.get(path)

    r = call(tmp_path, fn)
    assert r.status_code == 200 and str(tmp_path) not in r.text


@pytest.mark.parametrize("config", [b"[1,2,3]", b"null", b'"x"', b"\xff\xfe not utf-8"])
def test_one_model_with_a_broken_config_spoils_nothing_else(tmp_path, config):
    """Issue 13 item 5: a config blob that is not an object made /api/tags answer 500 for every model."""
    app, store, scheduler, _ = fake_app(tmp_path, models=("tiny", "broken"))
    from ollimg.manifest import Name

    broken = store.get(Name.parse("broken"))
    path = store.blobs.path(broken.manifest.config.digest)
    path.chmod(0o600)
    path.write_bytes(config)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE) as c:
            try:
                return await c.get("/api/tags"), await c.post("/api/show", json={"model": "broken"})
            finally:
                await scheduler.close()

    tags, show = asyncio.run(main())
    assert tags.status_code == 200 and sorted(m["name"] for m in tags.json()["models"]) == ["broken:latest", "tiny:latest"]
    assert show.status_code == 400 and show.json()["code"] == "invalid_model" and "ollimg rm broken" in show.json()["error"]
