"""Issue 13's "no bound on a request's work" findings as regression tests: limits and the memory
estimate are checked before any work on every interface, a generation past its time limit is
cancelled, a runtime that ignores cancel is stopped within two of its steps, Retry-After is the
scheduler's estimate, and ps shows measured memory (fake runtime, in-process ASGI)."""

from __future__ import annotations

import asyncio
import time

import pytest

from ollimg.errors import InsufficientMemory, OverLimit, TimedOut
from ollimg.runtime.request import GenerateRequest
from ollimg.server import admission, scheduler as scheduler_module
from ollimg.server.scheduler import Scheduler
from tests.unit.asgi import call
from tests.unit.fake_runtime import FakeFactory, make_model

LIMITS = admission.Limits(pixels=1024 * 1024, images=4, steps=50, seconds=None)


@pytest.mark.parametrize("path, body", [
    ("/api/generate", {"model": "tiny", "prompt": "x", "width": 4096, "height": 4096, "stream": False}),
    ("/v1/images/generations", {"model": "tiny", "prompt": "x", "size": "4096x4096"}),
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 4096, "height": 4096,
                           "override_settings": {"sd_model_checkpoint": "tiny"}}),
])
def test_every_interface_refuses_over_limit_before_loading(tmp_path, path, body, monkeypatch):
    monkeypatch.setenv("OLLIMG_MAX_PIXELS", str(1024 * 1024))

    async def fn(c, factory):
        return await c.post(path, json=body), len(factory.made)

    r, runtimes = call(tmp_path, fn)
    assert r.status_code == 400 and runtimes == 0, r.text
    text = r.text
    assert "OLLIMG_MAX_PIXELS" in text and "1024x1024" in text


@pytest.mark.parametrize("body, setting", [
    ({"n": 10}, "OLLIMG_MAX_IMAGES"),
    ({"steps": 200}, "OLLIMG_MAX_STEPS"),
])
def test_images_and_steps_limits(tmp_path, body, setting):
    async def fn(c, factory):
        return await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False, **body})

    r = call(tmp_path, fn)
    assert r.status_code == 400 and r.json()["code"] == "over_limit" and setting in r.json()["error"]


def test_the_red_team_request_is_refused_with_what_fits(tmp_path):
    """4096x4096, n=10, 200 steps was accepted although the estimate was 257 GB ('loading anyway')."""
    factory = FakeFactory()

    async def main():
        from ollimg.manifest import Store

        store = Store(tmp_path / "s")
        model = make_model(store, "big")
        big = admission.Limits(pixels=4096 * 4096, images=10, steps=200, seconds=None)
        sched = Scheduler(factory, keep_alive=None, free_memory=lambda: 24 * 10**9, limits=big)
        try:
            with pytest.raises(InsufficientMemory) as info:
                await sched.generate(model, GenerateRequest("x", width=4096, height=4096, steps=200, n=10), keep_alive=None)
            assert factory.made == []
            return str(info.value), info.value.http_status
        finally:
            await sched.close()

    message, status = asyncio.run(main())
    assert status == 507
    assert "needs about 258.2 GB" in message and "can be made free" in message
    assert "up to 0" not in message and "would fit" in message


def test_idle_models_count_as_room_with_their_measured_memory(tmp_path):
    from ollimg.manifest import Store

    factory = FakeFactory(memory=3 * 10**9)
    store = Store(tmp_path / "s")
    a, b = make_model(store, "a"), make_model(store, "b")

    async def main():
        sched = Scheduler(factory, keep_alive=None, free_memory=lambda: 10**8, limits=LIMITS)
        try:
            sched._free_memory = lambda: 10**12
            await sched.generate(a, GenerateRequest("x", width=64, height=64), keep_alive=None)
            sched._free_memory = lambda: 10**8  # a holds 3 GB; unloading it would make room for b
            assert sched._admit(b, sched._plan(b, 64, 64, 4, 1)) > 0
            with pytest.raises(InsufficientMemory, match="only about 3.1 GB can be made free") as info:
                sched._admit(b, admission.Plan(2048, 2048, 4, 4))
            assert "one image of up to 1280x1280 would fit" in str(info.value)
        finally:
            await sched.close()

    asyncio.run(main())


def test_plan_takes_the_model_defaults():
    p = admission.plan({"width": 128, "height": 96, "steps": 8}, None, None, None, 2, LIMITS)
    assert (p.width, p.height, p.steps, p.n) == (128, 96, 8, 2)
    assert admission.plan({"width": "junk"}, None, None, None, 1, LIMITS).width == admission.FALLBACK_SIZE
    with pytest.raises(OverLimit):
        admission.plan({}, 2048, 2048, None, 1, LIMITS)


def test_a_generation_past_its_time_limit_is_cancelled_and_the_runtime_recovers(tmp_path):
    from ollimg.manifest import Store

    factory = FakeFactory(step_delay=0.1)
    store = Store(tmp_path / "s")
    model = make_model(store, "slow")
    limits = admission.Limits(pixels=LIMITS.pixels, images=4, steps=50, seconds=0.35)

    async def main():
        sched = Scheduler(factory, keep_alive=None, free_memory=lambda: None, limits=limits)
        try:
            started = time.monotonic()
            with pytest.raises(TimedOut, match="OLLIMG_MAX_GENERATION_TIME"):
                await sched.generate(model, GenerateRequest("x", steps=40), keep_alive=None)
            took = time.monotonic() - started
            assert factory.cancelled == 1 and took < 1.0
            result = await sched.generate(model, GenerateRequest("x", steps=2), keep_alive=None)
            return result.steps
        finally:
            await sched.close()

    assert asyncio.run(main()) == 2


def test_a_runtime_that_ignores_cancel_is_stopped_within_two_steps(tmp_path, monkeypatch):
    """The fake's steps take 0.2 s; after cancel it keeps going (a long step that never checks)."""
    from ollimg.manifest import Store

    monkeypatch.setattr(scheduler_module, "CANCEL_MIN", 0.1)
    factory = FakeFactory(step_delay=0.2)
    store = Store(tmp_path / "s")
    model = make_model(store, "stubborn")
    limits = admission.Limits(pixels=LIMITS.pixels, images=4, steps=50, seconds=0.5)

    async def main():
        sched = Scheduler(factory, keep_alive=None, free_memory=lambda: None, limits=limits)
        try:
            await sched.load(model, keep_alive=None)
            [rt] = factory.made
            rt.cancel = lambda: None  # ignores cancel
            started = time.monotonic()
            with pytest.raises(TimedOut):
                await sched.generate(model, GenerateRequest("x", steps=30, width=64, height=64), keep_alive=None)
            waited = time.monotonic() - started - limits.seconds
            return waited, factory.stopped, sched.running()
        finally:
            await sched.close()

    waited, stopped, running = asyncio.run(main())
    assert stopped == ["stubborn:latest"] and running == []
    assert waited < 2 * 0.2 + 0.3  # two steps of grace, plus scheduling slack


def test_retry_after_is_the_schedulers_estimate(tmp_path):
    async def fn(c, factory):
        first = asyncio.create_task(c.post("/api/generate", json={"model": "tiny", "prompt": "x", "steps": 4, "stream": False}))
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(c.post("/api/generate", json={"model": "tiny", "prompt": "x", "steps": 4, "stream": False}))
        await asyncio.sleep(0.1)
        refused = await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
        await first
        await waiting
        return refused

    r = call(tmp_path, fn, max_queue=1, step_delay=1.0)
    # the running average starts at 5 s; one runs and one waits: about 2 generations to wait for
    assert r.status_code == 503 and int(r.headers["retry-after"]) == 10, r.headers
    assert "retry in about 10 s" in r.json()["error"]


def test_ps_shows_measured_memory(tmp_path):
    async def fn(c, factory):
        await c.post("/api/generate", json={"model": "tiny", "prompt": "", "stream": False})
        [rt] = factory.made
        rt.host_memory, rt.gpu_memory = 542 * 10**6, 2 * 10**9
        return (await c.get("/api/ps")).json()["models"][0]

    running = call(tmp_path, fn)
    assert running["size"] == 542 * 10**6 + 2 * 10**9 and running["size_vram"] == 2 * 10**9
