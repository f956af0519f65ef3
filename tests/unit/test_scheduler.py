"""The scheduler with a fake runtime factory: reuse, keep-alive, LRU eviction, queue, crash, cancel."""

from __future__ import annotations

import asyncio

import pytest

from ollimg.errors import Busy, RuntimeFailed
from ollimg.manifest import Store
from ollimg.runtime.request import GenerateRequest
from ollimg.server.scheduler import Scheduler, key
from tests.unit.fake_runtime import FakeFactory, make_model


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    for name in ("a", "b", "c"):
        make_model(s, name)
    return s


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def req(**kw) -> GenerateRequest:
    return GenerateRequest(prompt="a cat", width=64, height=64, **kw)


def test_loads_once_and_reuses(store):
    factory = FakeFactory()

    async def main():
        sched = Scheduler(factory, keep_alive=60, free_memory=lambda: None)
        m = _model(store, "a")
        loads = []
        r1 = await sched.generate(m, req(seed=7, n=2), keep_alive=60, on_load=loads.append)
        r2 = await sched.generate(m, req(), keep_alive=60, on_load=loads.append)
        assert r1.seeds == [7, 8] and len(r1.images) == 2
        assert r2.seeds == [42]
        assert len(factory.made) == 1 and loads[1] == 0.0
        assert [r.key for r in sched.running()] == [key(m.name)]
        await sched.close()
        assert factory.loaded() == []

    run(main())


def _model(store, name):
    from ollimg.manifest import Name

    return store.get(Name.parse(name))


def test_keep_alive_expiry_and_zero(store):
    factory = FakeFactory()

    async def main():
        sched = Scheduler(factory, keep_alive=60, free_memory=lambda: None)
        await sched.generate(_model(store, "a"), req(), keep_alive=0.2)
        assert factory.loaded() == ["a:latest"]
        assert sched.running()[0].expires_at is not None
        await asyncio.sleep(0.5)
        assert factory.loaded() == [] and sched.running() == []
        await sched.generate(_model(store, "b"), req(), keep_alive=0)
        await asyncio.sleep(0.05)
        assert factory.loaded() == []
        await sched.generate(_model(store, "c"), req(), keep_alive=None)
        assert sched.running()[0].expires_at is None
        await sched.close()

    run(main())


def test_keep_alive_parsing():
    sched = Scheduler(FakeFactory(), keep_alive=300)
    assert sched.keep_alive(None) == 300
    assert sched.keep_alive("5m") == 300 and sched.keep_alive(0) == 0 and sched.keep_alive("-1") is None
    assert sched.keep_alive(10**12) is None


def test_lru_eviction_by_count(store):
    factory = FakeFactory()

    async def main():
        sched = Scheduler(factory, max_loaded=2, keep_alive=None, free_memory=lambda: None)
        await sched.generate(_model(store, "a"), req(), keep_alive=None)
        await sched.generate(_model(store, "b"), req(), keep_alive=None)
        await sched.generate(_model(store, "a"), req(), keep_alive=None)  # b is now least recently used
        await sched.generate(_model(store, "c"), req(), keep_alive=None)
        assert sorted(factory.loaded()) == ["a:latest", "c:latest"]
        assert factory.stopped == ["b:latest"]
        await sched.close()

    run(main())


def test_lru_eviction_by_memory(store):
    """Each fake runtime holds 1 GB; unloading the least recently used idle one makes room for a third."""
    factory = FakeFactory(memory=10**9)
    total = {"bytes": 10**12}

    def free():
        return total["bytes"] - sum(rt.memory for rt in factory.made if rt.alive)

    async def main():
        sched = Scheduler(factory, max_loaded=5, keep_alive=None, free_memory=free)
        await sched.generate(_model(store, "a"), req(), keep_alive=None)
        await sched.generate(_model(store, "b"), req(), keep_alive=None)
        total["bytes"] = int(2.3e9)  # 0.3 GB free: c (about 0.52 GB) fits once one idle model goes
        await sched.generate(_model(store, "c"), req(), keep_alive=None)
        assert factory.stopped == ["a:latest"]
        assert factory.loaded() == ["b:latest", "c:latest"]
        await sched.close()

    run(main())


def test_one_generation_per_runtime_and_queue_overflow(store):
    factory = FakeFactory(step_delay=0.05)

    async def main():
        sched = Scheduler(factory, max_queue=2, keep_alive=None, free_memory=lambda: None)
        m = _model(store, "a")
        tasks = [asyncio.create_task(sched.generate(m, req(seed=i), keep_alive=None)) for i in range(3)]
        await asyncio.sleep(0.05)  # one runs, two wait
        [runner] = sched.running()
        assert runner.busy and runner.users == 3
        with pytest.raises(Busy):
            await sched.generate(m, req(), keep_alive=None)
        assert sched.retry_after >= 1
        results = await asyncio.gather(*tasks)
        assert [r.seeds[0] for r in results] == [0, 1, 2]
        assert factory.max_concurrent == 1
        await sched.generate(m, req(), keep_alive=None)  # the queue drained: accepted again
        await sched.close()

    run(main())


def test_crash_restarts_cleanly(store):
    factory = FakeFactory()

    async def main():
        sched = Scheduler(factory, keep_alive=None, free_memory=lambda: None)
        m = _model(store, "a")
        await sched.generate(m, req(), keep_alive=None)
        factory.crash_at = 2
        with pytest.raises(RuntimeFailed) as e:
            await sched.generate(m, req(), keep_alive=None)
        assert e.value.stderr_tail == "Killed" and e.value.retryable
        assert sched.running() == []
        result = await sched.generate(m, req(), keep_alive=None)
        assert result.images and len(factory.made) == 2
        await sched.close()

    run(main())


def test_load_failure_then_success(store):
    factory = FakeFactory()

    async def main():
        sched = Scheduler(factory, keep_alive=None, free_memory=lambda: None)
        m = _model(store, "a")
        factory.fail_load = True
        with pytest.raises(RuntimeFailed) as e:
            await sched.generate(m, req(), keep_alive=None)
        assert "bad weights" in e.value.stderr_tail
        assert sched.running() == [] and factory.stopped == ["a:latest"]
        factory.fail_load = False
        assert (await sched.generate(m, req(), keep_alive=None)).images
        await sched.close()

    run(main())


def test_cancel_reaches_runtime_and_frees_it(store):
    factory = FakeFactory(step_delay=0.05)

    async def main():
        sched = Scheduler(factory, keep_alive=None, free_memory=lambda: None)
        m = _model(store, "a")
        task = asyncio.create_task(sched.generate(m, req(steps=100), keep_alive=None))
        waiting = asyncio.create_task(sched.generate(m, req(steps=2), keep_alive=None))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert factory.cancelled == 1
        assert (await waiting).steps == 2  # the queued request runs once the cancelled one has ended
        assert factory.max_concurrent == 1
        await sched.close()

    run(main())


def test_cancel_while_queued(store):
    factory = FakeFactory(step_delay=0.05)

    async def main():
        sched = Scheduler(factory, max_queue=1, keep_alive=None, free_memory=lambda: None)
        m = _model(store, "a")
        first = asyncio.create_task(sched.generate(m, req(steps=4), keep_alive=None))
        await asyncio.sleep(0.02)
        queued = asyncio.create_task(sched.generate(m, req(), keep_alive=None))
        await asyncio.sleep(0.02)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        await first
        assert factory.cancelled == 0
        await sched.generate(m, req(), keep_alive=None)  # the queue slot was given back
        await sched.close()

    run(main())


def test_unload(store):
    factory = FakeFactory()

    async def main():
        sched = Scheduler(factory, keep_alive=None, free_memory=lambda: None)
        m = _model(store, "a")
        await sched.load(m, keep_alive=None)
        assert factory.loaded() == ["a:latest"]
        assert await sched.unload(key(m.name))
        assert factory.loaded() == [] and sched.running() == []
        assert not await sched.unload(key(m.name))
        await sched.close()

    run(main())


def test_the_factorys_idle_hook_runs_only_after_idle_seconds_with_nothing_running(store, monkeypatch):
    """ProcessFactory starts its spare runtime from idle(): never beside a generation."""
    from ollimg.server import scheduler

    monkeypatch.setattr(scheduler, "IDLE", 0.3)

    class IdleFactory(FakeFactory):
        def __init__(self):
            super().__init__(step_delay=0.1)
            self.idles: list[int] = []  # how many runtimes were generating when idle() ran

        def idle(self):
            self.idles.append(self.concurrent)

    factory = IdleFactory()

    async def main():
        sched = Scheduler(factory, keep_alive=60, free_memory=lambda: None)
        m = _model(store, "a")
        await sched.generate(m, req(steps=2), keep_alive=60)
        await asyncio.sleep(0.1)
        await sched.generate(m, req(steps=4), keep_alive=60)  # 0.4 s, started before the first 0.3 s ran out
        assert factory.idles == []
        await asyncio.sleep(0.5)
        assert factory.idles == [0]  # once, 0.3 s after the last request, nothing generating
        await sched.close()

    run(main())
