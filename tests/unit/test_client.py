"""The client against the real app (fake runtime) over httpx.ASGITransport: shapes and rebuilt errors."""

from __future__ import annotations

import base64

import pytest

from ollimg.client import Client
from ollimg.errors import Busy, InvalidInput, InvalidName, ModelNotFound, RuntimeFailed, ServerUnreachable
from tests.unit.asgi import BASE, SyncASGI, fake_app


@pytest.fixture
def served(tmp_path):
    app, store, scheduler, factory = fake_app(tmp_path, models=("tiny", "other"))
    transport = SyncASGI(app)
    client = Client(BASE, transport=transport)
    yield client, factory, transport, scheduler
    transport.run(scheduler.close())
    client.close()
    transport.close()


def test_generate_streams_steps_and_returns_images(served):
    client, factory, _, _ = served
    steps = []
    result = client.generate("tiny", "a cat", width=32, height=48, steps=3, seed=5, n=2, on_step=steps.append)
    assert [(s.step, s.total) for s in steps] == [(1, 3), (2, 3), (3, 3)]
    assert result.done and result.done_reason == "stop"
    assert result.seed == 5 and result.seeds == [5, 6]
    assert [base64.b64decode(i) for i in result.images] == [b"png:tiny:latest:5", b"png:tiny:latest:6"]
    assert (result.width, result.height, result.steps) == (32, 48, 3)


def test_load_ps_unload(served):
    client, factory, _, _ = served
    assert client.load("tiny", keep_alive="10m").done_reason == "load"
    [running] = client.ps()
    assert running.name == "tiny:latest" and running.processor == "CPU" and running.expires_at
    client.unload("tiny")
    assert client.ps() == [] and factory.loaded() == []


def test_models_listing_and_show(served):
    client, _, _, _ = served
    assert sorted(m.name for m in client.tags()) == ["other:latest", "tiny:latest"]
    shown = client.show("tiny")
    assert shown.parameters == "steps 4" and shown.details.family == "zimage"
    assert client.version()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"model": "missing"}, ModelNotFound),
        ({"model": "Bad Name!"}, InvalidName),
        ({"model": "tiny", "width": 30}, InvalidInput),
        ({"model": "tiny", "n": 0}, InvalidInput),
        ({"model": "tiny", "keep_alive": "soon"}, InvalidInput),
    ],
)
def test_errors_are_rebuilt(served, kwargs, error):
    client, _, transport, _ = served
    model = kwargs.pop("model")
    with pytest.raises(error):
        # bypass the client's own validation so the server is the one refusing
        client._request("POST", "/api/generate", json={"model": model, "prompt": "x", "stream": False, **kwargs})


def test_runtime_crash_reaches_client_then_recovers(served):
    client, factory, _, _ = served
    client.generate("tiny", "warm up")
    factory.crash_at = 2
    with pytest.raises(RuntimeFailed) as e:
        client.generate("tiny", "boom")
    assert "Killed" in str(e.value)
    assert client.generate("tiny", "works again").images


def test_load_failure_is_an_http_error_with_stderr(served):
    client, factory, _, _ = served
    factory.fail_load = True
    with pytest.raises(RuntimeFailed) as e:
        client.generate("tiny", "x")
    assert "bad weights" in str(e.value)


def test_busy_is_rebuilt():
    from ollimg.client import _error

    e = _error(503, b'{"error": "server busy", "code": "busy"}')
    assert isinstance(e, Busy) and e.message == "server busy"


def test_unreachable():
    with pytest.raises(ServerUnreachable, match="ollimg serve"):
        Client("http://127.0.0.1:9").tags()
