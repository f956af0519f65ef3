"""HTTP rules and the OpenAI-compatible shapes of the app (fake runtime, in-process ASGI)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.unit.asgi import call


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if fields:
            events.append((fields.get("event"), json.loads(fields["data"])))
    return events


def test_images_generations_json(tmp_path):
    async def fn(c, _):
        r = await c.post("/v1/images/generations", json={"model": "tiny", "prompt": "a cat", "n": 3, "size": "32x64", "seed": 9})
        return r.status_code, r.json()

    status, body = call(tmp_path, fn)
    assert status == 200
    assert [d["seed"] for d in body["data"]] == [9, 10, 11] and body["size"] == "32x64"
    assert body["output_format"] == "png" and all(d["b64_json"] for d in body["data"])


def test_images_generations_stream(tmp_path):
    async def fn(c, _):
        r = await c.post("/v1/images/generations", json={
            "model": "tiny", "prompt": "a cat", "n": 2, "stream": True, "partial_images": 1, "steps": 4,
            "output_format": "webp", "progress": True,
        })
        return r.status_code, r.headers["content-type"], r.text

    status, ctype, text = call(tmp_path, fn)
    assert status == 200 and ctype.startswith("text/event-stream")
    events = sse_events(text)
    names = [e for e, _ in events]
    assert names.count("progress") == 4 and names.count("image_generation.partial_image") == 2  # one per image
    partial = [d for e, d in events if e == "image_generation.partial_image"]
    assert [(d["partial_image_index"], d["image_index"]) for d in partial] == [(0, 0), (0, 1)]
    assert names[-2:] == ["image_generation.completed", "image_generation.completed"]
    assert events[0][1] == {"type": "progress", "step": 1, "total": 4}
    done = [d for e, d in events if e == "image_generation.completed"]
    assert [d["image_index"] for d in done] == [0, 1] and done[0]["output_format"] == "webp"


def test_images_stream_has_no_progress_events_unless_asked(tmp_path):
    """The openai SDK reads every event as an image event: step events would be empty partial images."""
    async def fn(c, _):
        r = await c.post("/v1/images/generations", json={"model": "tiny", "prompt": "a cat", "stream": True, "steps": 4})
        return r.text

    assert [e for e, _ in sse_events(call(tmp_path, fn))] == ["image_generation.completed"]


def test_images_openai_model_names_and_free_sizes(tmp_path):
    """Open WebUI's OpenAI engine offers only dall-e/gpt-image names and lets users type any size."""
    async def fn(c, _):
        return [await c.post("/v1/images/generations", json={"prompt": "x", **extra}) for extra in (
            {"model": "dall-e-2", "size": "100x100"}, {"model": "gpt-image-1", "size": "1000x1000"}, {})]

    dalle, gpt, unnamed = call(tmp_path, fn, models=("tiny",))
    assert dalle.status_code == 200 and dalle.json()["size"] == "96x96"
    assert gpt.status_code == 200 and gpt.json()["size"] == "1008x1008"
    assert unnamed.status_code == 200


def test_v1_model_retrieve(tmp_path):
    async def fn(c, _):
        return await c.get("/v1/models/tiny"), await c.get("/v1/models/nope")

    found, missing = call(tmp_path, fn)
    assert found.status_code == 200 and found.json()["id"] == "tiny:latest" and found.json()["object"] == "model"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_routes_ollimg_lacks_say_so(tmp_path):
    async def fn(c, _):
        return [await c.post(p, json={"model": "tiny"}) for p in ("/api/chat", "/api/embed", "/api/nothing")]

    chat, embed, other = call(tmp_path, fn)
    assert chat.status_code == 404 and "no chat" in chat.json()["error"] and "/api/generate" in chat.json()["error"]
    assert embed.status_code == 404 and "no chat or embeddings" in embed.json()["error"]
    assert other.status_code == 404 and other.json()["error"] == "no endpoint POST /api/nothing; the API is listed at /docs"


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded"])
def test_json_without_a_json_content_type(tmp_path, content_type):
    """ollama's documented `curl http://localhost:11434/api/generate -d '{...}'` form."""
    headers = {"Content-Type": content_type} if content_type else {}

    async def fn(c, _):
        native = await c.post("/api/generate", content=b'{"model": "tiny", "prompt": "x", "stream": false}',
                              headers=headers)
        return native, await c.post("/sdapi/v1/txt2img", content=b'{"prompt": "x"}', headers=headers)

    native, sdapi = call(tmp_path, fn)
    assert native.status_code == 200 and native.json()["images"], native.text
    assert sdapi.status_code == 200 and sdapi.json()["images"], sdapi.text


def test_native_generate_speaks_ollamas_fields(tmp_path):
    """The ollama client reads `image` and progress `completed`/`total`, and sends the seed as options.seed."""
    async def fn(c, _):
        whole = await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False, "options": {"seed": 42}})
        streamed = await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "steps": 3, "format": ""})
        return whole.json(), [json.loads(line) for line in streamed.text.splitlines()]

    whole, lines = call(tmp_path, fn)
    assert whole["seed"] == 42 and whole["image"] == whole["images"][0]
    assert [(x["completed"], x["total"]) for x in lines[:-1]] == [(1, 3), (2, 3), (3, 3)]
    assert lines[-1]["done"] and lines[-1]["image"]


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "tiny", "prompt": "x", "size": "big"}, 400, "size"),
        ({"model": "tiny", "prompt": "x", "size": "8192x16"}, 400, "size"),
        ({"model": "tiny", "prompt": "x", "n": 0}, 400, "n"),
        ({"model": "tiny", "prompt": "x", "n": 11}, 400, "n"),
        ({"model": "tiny", "prompt": ""}, 400, "prompt"),
        ({"model": "tiny", "prompt": "x", "response_format": "url"}, 400, "response_format"),
        ({"model": "tiny", "prompt": "x", "background": "transparent"}, 400, "background"),
        ({"model": "nope", "prompt": "x"}, 404, "model"),
        ({"model": "tiny", "prompt": "x" * 40000}, 400, "prompt"),
    ],
)
def test_openai_errors(tmp_path, body, status, param):
    async def fn(c, _):
        return await c.post("/v1/images/generations", json=body)

    r = call(tmp_path, fn)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param and error["message"]
    assert error["type"] == "invalid_request_error"
    assert r.headers["x-should-retry"] == "false"
    if status == 404:
        assert error["code"] == "model_not_found"


def test_malformed_json_is_400_on_both_apis(tmp_path):
    async def fn(c, _):
        headers = {"Content-Type": "application/json"}
        return [await c.post(p, content=b'{"model": ', headers=headers) for p in ("/api/generate", "/v1/images/generations")]

    native, openai = call(tmp_path, fn)
    assert native.status_code == 400 and "not valid JSON" in native.json()["error"]
    assert openai.status_code == 400 and openai.json()["error"]["type"] == "invalid_request_error"


def test_queue_full_is_503_with_retry_after(tmp_path):
    async def fn(c, factory):
        body = {"model": "tiny", "prompt": "x", "steps": 10, "stream": False}
        first = asyncio.create_task(c.post("/api/generate", json=body))
        await asyncio.sleep(0.1)
        native = await c.post("/api/generate", json=body)
        openai = await c.post("/v1/images/generations", json={"model": "tiny", "prompt": "x"})
        return (await first).status_code, native, openai

    first, native, openai = call(tmp_path, fn, max_queue=0, step_delay=0.05)
    assert first == 200
    for r in (native, openai):
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert native.json()["code"] == "busy"
    assert openai.json()["error"]["type"] == "server_error"


def test_api_key(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLIMG_API_KEY", "s3cret")

    async def fn(c, _):
        return (
            await c.get("/v1/models"),
            await c.get("/api/tags", headers={"Authorization": "Bearer wrong"}),
            await c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}),
            await c.get("/"),
        )

    missing, wrong, right, root = call(tmp_path, fn)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert wrong.status_code == 401 and wrong.json()["code"] == "unauthorized"
    assert right.status_code == 200 and root.status_code == 200


@pytest.mark.parametrize(
    "host, allowed",
    [("localhost:11500", True), ("127.0.0.1:11500", True), ("[::1]:11500", True), ("192.168.1.20", True),
     ("host.docker.internal:11500", True), ("mybox.local", True), ("app.localhost", True),
     ("evil.example.com", False), ("1.2.3.4", False), ("localhost.evil.com", False)],
)
def test_host_allowlist_on_loopback(tmp_path, host, allowed):
    async def fn(c, _):
        return await c.get("/api/version", headers={"Host": host})

    assert (call(tmp_path, fn).status_code == 200) == allowed


def test_cors(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLIMG_ORIGINS", "https://ui.example.com")

    async def fn(c, _):
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,x-stainless-os"}
        return (
            await c.options("/v1/images/generations", headers={"Origin": "http://localhost:8080", **preflight}),
            await c.options("/v1/images/generations", headers={"Origin": "https://ui.example.com", **preflight}),
            await c.get("/api/tags", headers={"Origin": "https://evil.example.com"}),
            await c.get("/api/tags", headers={"Origin": "app://obsidian.md"}),
        )

    local, extra, evil, app_origin = call(tmp_path, fn)
    assert local.status_code == 204 and local.headers["access-control-allow-origin"] == "http://localhost:8080"
    assert extra.status_code == 204
    assert "access-control-allow-origin" not in evil.headers
    assert app_origin.headers["access-control-allow-origin"] == "app://obsidian.md"


def test_native_stream_error_after_start_is_a_final_line(tmp_path):
    async def fn(c, factory):
        await c.post("/api/generate", json={"model": "tiny", "prompt": "", "stream": False})
        factory.crash_at = 3
        return await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "steps": 4})

    r = call(tmp_path, fn)
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert r.status_code == 200 and [x["step"] for x in lines[:-1]] == [1, 2]
    assert lines[-1]["code"] == "runtime_failed" and "Killed" in lines[-1]["error"]


def test_empty_prompt_loads_and_keep_alive_zero_unloads(tmp_path):
    async def fn(c, factory):
        load = await c.post("/api/generate", json={"model": "tiny"})
        loaded = factory.loaded()
        unload = await c.post("/api/generate", json={"model": "tiny", "keep_alive": 0})
        return load.json(), loaded, unload.json(), factory.loaded()

    load, loaded, unload, after = call(tmp_path, fn)
    assert load["done_reason"] == "load" and loaded == ["tiny:latest"]
    assert unload["done_reason"] == "unload" and after == []
