"""The scheduler: which runtime processes are loaded, and who may use them when.

A model is loaded (its runtime started) on first use and kept warm; it is unloaded when its
keep-alive runs out, and the least recently used idle one is unloaded when a new model does not fit
(OLLIMG_MAX_LOADED_MODELS, or the memory estimate against free memory). Each runtime runs one
generation at a time; the others wait in FIFO order, and when OLLIMG_MAX_QUEUE requests already
wait, a new one gets Busy (503). A cancelled request cancels its generation. A runtime that dies
is dropped: the failing request gets the error with its stderr tail, the next one starts a fresh
runtime.

All state lives on the event loop; runtime calls (blocking) run in worker threads. The runtime is
made by a factory (`factory(model) -> runtime`), so tests can pass a fake. Imports config, errors,
the manifest store types and the runtime request types; never torch or mlx.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from ollimg import config
from ollimg.errors import Busy, RuntimeFailed
from ollimg.manifest import Model, Name
from ollimg.progress import Step
from ollimg.runtime.request import GenerateRequest, GenerateResult
from ollimg.server import memory

log = logging.getLogger(__name__)

RuntimeFactory = Callable[[Model], Any]
"""Makes a runtime for a model: an object with start(timeout), generate(request, on_step=,
on_preview=), cancel(), stop() and the properties alive, pid, processor, memory."""

FOREVER = 100 * 365 * 86400.0  # longer keep-alives mean "forever"
CANCEL_GRACE = 30.0  # seconds a runtime gets to honour cancel() before it is stopped


@dataclass(eq=False)
class Runner:
    """One model slot: its runtime (None while not loaded) and who is using or waiting for it."""

    key: str
    model: Model
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    runtime: Any = None
    users: int = 0
    busy: bool = False
    size: int = 0
    last_used: float = 0.0
    keep_alive: float | None = None
    expires_at: float | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def label(self) -> str:
        return self.model.name.display()


class Scheduler:
    def __init__(
        self,
        factory: RuntimeFactory,
        *,
        max_loaded: int | None = None,
        max_queue: int | None = None,
        keep_alive: float | None | str = "env",
        load_timeout: float | None = None,
        free_memory: Callable[[], int | None] = memory.free,
    ):
        self._factory = factory
        self.max_loaded = max(1, config.max_loaded_models() if max_loaded is None else max_loaded)
        self.max_queue = max(0, config.max_queue() if max_queue is None else max_queue)
        self.default_keep_alive = config.keep_alive() if keep_alive == "env" else keep_alive
        self.load_timeout = config.load_timeout() if load_timeout is None else load_timeout
        self._free_memory = free_memory
        self._runners: dict[str, Runner] = {}
        self._pending = 0
        self._seconds = 5.0  # running average of a generation, for Retry-After
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="ollimg-runtime")

    # -- public --------------------------------------------------------------------------------

    def keep_alive(self, value: str | float | None) -> float | None:
        """A request's keep_alive in seconds (None: forever); absent means the server default."""
        seconds = config.parse_duration(value, self.default_keep_alive) if value is not None else self.default_keep_alive
        return None if seconds is None or seconds >= FOREVER else seconds

    async def generate(
        self,
        model: Model,
        request: GenerateRequest,
        *,
        keep_alive: float | None,
        on_load: Callable[[float], None] | None = None,
        on_step: Callable[[Step], None] | None = None,
        on_preview: Callable[[int, bytes], None] | None = None,
    ) -> GenerateResult:
        """Runs one generation on the model's runtime (loading it first if needed).

        Callbacks run on the event loop: on_load(seconds spent loading, 0 if warm) once the
        runtime is ready, on_step per finished step, on_preview(index, png) per partial image.
        """
        loop = asyncio.get_running_loop()
        need = memory.estimate(model.size, request.width or 1024, request.height or 1024, request.n)
        async with self._use(model, keep_alive, need) as (runner, load_seconds):
            if on_load:
                on_load(load_seconds)
            rt = runner.runtime
            call = functools.partial(
                rt.generate,
                request,
                on_step=_threadsafe(loop, on_step),
                on_preview=_threadsafe(loop, on_preview),
            )
            started = time.monotonic()
            fut = loop.run_in_executor(self._executor, call)
            try:
                result = await asyncio.shield(fut)
            except asyncio.CancelledError:
                log.info("cancelling generation on %s", runner.label)
                rt.cancel()
                await self._settle(runner, fut)
                raise
            except RuntimeFailed as e:
                if not rt.alive:
                    log.warning("runtime for %s died: %s\nruntime stderr:\n%s", runner.label, e, e.stderr_tail)
                    e.retryable = True  # the next request starts a fresh runtime
                    await self._stop(runner)
                raise
            self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - started)
            return result

    async def load(self, model: Model, *, keep_alive: float | None) -> float:
        """Loads a model without generating; returns the seconds loading took (0 if it was warm)."""
        need = memory.estimate(model.size, 1024, 1024, 1)
        async with self._use(model, keep_alive, need) as (_, load_seconds):
            return load_seconds

    async def unload(self, key: str) -> bool:
        """Unloads a model now (after its running generation). False if it was not loaded."""
        runner = self._runners.get(key)
        if runner is None or runner.runtime is None:
            return False
        async with runner.lock:
            await self._stop(runner)
        self._forget(runner)
        await self._notify()
        return True

    def running(self) -> list[Runner]:
        return [r for r in self._runners.values() if r.runtime is not None]

    @property
    def retry_after(self) -> int:
        """Seconds a client refused with Busy should wait."""
        return max(1, min(120, math.ceil(self._seconds * max(1, self._pending))))

    async def close(self) -> None:
        """Stops every runtime (server shutdown)."""
        for runner in list(self._runners.values()):
            self._cancel_timer(runner)
            if runner.runtime is not None:
                runner.runtime.cancel()
                await self._stop(runner)
        self._runners.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- slots ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _use(self, model: Model, keep_alive: float | None, need: int) -> AsyncIterator[tuple[Runner, float]]:
        slot = key(model.name)
        runner = self._runners.get(slot)
        if runner is None:
            runner = self._runners[slot] = Runner(slot, model)
        queued = runner.lock.locked()
        if queued and self._pending >= self.max_queue:
            self._forget(runner)
            raise Busy(f"server busy: {self._pending} requests are waiting already; retry in a few seconds")
        runner.users += 1
        self._cancel_timer(runner)
        self._pending += queued
        try:
            await runner.lock.acquire()
        except BaseException:
            runner.users -= 1
            self._after_use(runner)
            raise
        finally:
            self._pending -= queued
        try:
            load_seconds = 0.0
            if runner.runtime is not None and (not runner.runtime.alive or runner.model.digest != model.digest):
                await self._stop(runner)
            if runner.runtime is None:
                load_seconds = await self._load(runner, model, need)
            runner.busy = True
            yield runner, load_seconds
        finally:
            runner.busy = False
            runner.last_used = time.monotonic()
            runner.keep_alive = keep_alive
            runner.users -= 1
            runner.lock.release()
            self._after_use(runner)
            await self._notify()

    def _after_use(self, runner: Runner) -> None:
        """Starts the keep-alive clock once nobody uses or waits for the runner."""
        if runner.users > 0:
            return
        if runner.runtime is None:
            self._forget(runner)
            return
        ka = runner.keep_alive
        if ka is None:
            runner.expires_at = None
            return
        runner.expires_at = time.time() + ka
        loop = asyncio.get_running_loop()
        runner.timer = loop.call_later(ka, lambda: loop.create_task(self._expire(runner)))

    async def _expire(self, runner: Runner) -> None:
        if runner.users > 0 or runner.lock.locked() or self._runners.get(runner.key) is not runner:
            return
        log.info("keep-alive of %s ran out: unloading", runner.label)
        async with runner.lock:
            await self._stop(runner)
        self._forget(runner)
        await self._notify()

    def _forget(self, runner: Runner) -> None:
        if runner.users == 0 and runner.runtime is None and self._runners.get(runner.key) is runner:
            del self._runners[runner.key]

    def _cancel_timer(self, runner: Runner) -> None:
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None
        runner.expires_at = None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- loading and unloading -----------------------------------------------------------------

    async def _load(self, runner: Runner, model: Model, need: int) -> float:
        async with self._load_lock:
            await self._make_room(runner, need)
            log.info("loading %s", runner.label)
            started = time.monotonic()
            rt = self._factory(model)
            try:
                await self._call(rt.start, self.load_timeout)
            except BaseException:
                await self._call(_stop_quietly, rt)
                raise
            runner.runtime, runner.model = rt, model
            runner.size = getattr(rt, "memory", 0) or need
            return time.monotonic() - started

    async def _make_room(self, runner: Runner, need: int) -> None:
        """Unloads least recently used idle models until the new one fits, or waits for one."""
        while True:
            others = [r for r in self.running() if r is not runner]
            free = self._free_memory()
            fits = free is None or need <= free
            if len(others) < self.max_loaded and fits:
                return
            idle = sorted((r for r in others if r.users == 0 and not r.lock.locked()), key=lambda r: r.last_used)
            if idle:
                victim = idle[0]
                log.info("unloading %s to make room for %s", victim.label, runner.label)
                self._cancel_timer(victim)
                async with victim.lock:
                    await self._stop(victim)
                self._forget(victim)
                continue
            if len(others) >= self.max_loaded:
                async with self._changed:
                    await self._changed.wait()
                continue
            log.warning(
                "%s needs about %.1f GB, %.1f GB free and nothing idle to unload: loading anyway",
                runner.label, need / 1e9, (free or 0) / 1e9,
            )
            return

    async def _stop(self, runner: Runner) -> None:
        rt, runner.runtime = runner.runtime, None
        self._cancel_timer(runner)
        if rt is not None:
            log.info("stopping runtime of %s", runner.label)
            await self._call(_stop_quietly, rt)

    async def _settle(self, runner: Runner, fut: asyncio.Future) -> None:
        """Waits (through further cancellation) until a cancelled generation has really ended."""
        deadline = time.monotonic() + CANCEL_GRACE
        while not fut.done():
            try:
                await asyncio.wait({fut}, timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.CancelledError:
                continue
            if not fut.done():
                log.warning("runtime of %s ignored cancel for %.0f s: stopping it", runner.label, CANCEL_GRACE)
                await asyncio.shield(self._stop(runner))
                break
        if fut.done() and not fut.cancelled():
            fut.exception()  # retrieved: the request is cancelled whatever the runtime said

    async def _call(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def key(name: Name) -> str:
    """The slot key of a model name: the full name without a pinned digest."""
    return f"{name.host}/{name.namespace}/{name.model}:{name.tag}"


def _stop_quietly(rt: Any) -> None:
    try:
        rt.stop()
    except Exception:  # a runtime that fails to stop is gone from our books either way
        log.warning("stopping a runtime failed", exc_info=True)


def _threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable | None) -> Callable | None:
    if fn is None:
        return None
    return lambda *args: loop.call_soon_threadsafe(fn, *args)


def process_factory(store: Any) -> RuntimeFactory:
    """The production factory: a runtime subprocess (ollimg.runtime.process) per model."""

    def make(model: Model) -> Any:
        try:
            from ollimg.runtime.process import RuntimeProcess
        except ImportError as e:
            raise RuntimeFailed(f"the runtime is not available in this installation ({e})") from None
        backend, device = config.backend(), config.device()
        return RuntimeProcess(
            model.name.display(),  # the runtime parses it with the same environment
            models_dir=store.root,
            backend=None if backend == "auto" else backend,
            device=None if device == "auto" else device,
        )

    return make
