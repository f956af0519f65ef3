"""Test helpers: the server app with a fake runtime, and a sync httpx transport over ASGITransport."""

from __future__ import annotations

import asyncio
import threading

import httpx

from ollimg.manifest import Store
from ollimg.server.app import create_app
from ollimg.server.scheduler import Scheduler
from tests.unit.fake_runtime import FakeFactory, make_model

BASE = "http://127.0.0.1:11500"


class SyncASGI(httpx.BaseTransport):
    """Runs the app on an event loop in a thread, so the sync Client can use httpx.ASGITransport."""

    def __init__(self, app):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.asgi = httpx.ASGITransport(app)

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def call():
            response = await self.asgi.handle_async_request(request)
            body = b"".join([chunk async for chunk in response.stream])
            return response.status_code, response.headers, body

        status, headers, body = self.run(call())
        return httpx.Response(status, headers=headers, content=body, request=request)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def fake_app(tmp_path, models=("tiny",), bind_host="127.0.0.1", **sched_options):
    """(app, store, scheduler, factory) with `models` stored and a fake runtime factory."""
    store = Store(tmp_path / "store")
    for name in models:
        make_model(store, name)
    factory = FakeFactory(**{k: sched_options.pop(k) for k in ("load_delay", "step_delay") if k in sched_options})
    sched_options.setdefault("keep_alive", 60)
    scheduler = Scheduler(factory, free_memory=lambda: None, **sched_options)
    app = create_app(scheduler, store, bind_host=bind_host)
    return app, store, scheduler, factory


def call(tmp_path, fn, **options):
    """Runs `await fn(client, factory)` against a fresh app (fake_app's options); returns its result."""
    app, _, scheduler, factory = fake_app(tmp_path, **options)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE) as client:
            try:
                return await fn(client, factory)
            finally:
                await scheduler.close()

    return asyncio.run(main())
