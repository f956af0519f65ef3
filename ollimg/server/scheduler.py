"""The scheduler: which runtime processes are loaded, and who may use them when.

A model is loaded (its runtime started) on first use and kept warm; it is unloaded when its
keep-alive runs out, and the least recently used idle one is unloaded when a new model does not fit
(OLLIMG_MAX_LOADED_MODELS, or the memory estimate against free memory). Each runtime runs one
generation at a time; the others wait in FIFO order, and when OLLIMG_MAX_QUEUE requests already
wait, a new one gets Busy (503). A cancelled request cancels its generation. A runtime that dies
is dropped: the failing request gets the error with its stderr tail, the next one starts a fresh
runtime.

Every generation first passes the capability check (capabilities.py: can the model take its
input images?), and every generation and load admission (admission.py): the configured limits, then its
estimated peak memory against free memory plus what unloading idle models would release. A
generation that runs past OLLIMG_MAX_GENERATION_TIME is cancelled (504). Cancel reaches the runtime
at once and takes effect at its next step boundary; a runtime that has not ended the generation
within max(CANCEL_MIN, 2 x the longest step seen) is stopped (killed after 5 s more), so a cancel
never waits on more than about two steps, and a step's length is bounded by the pixel and image
limits. The next request starts a fresh runtime.

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
from ollimg.errors import Busy, RuntimeFailed, TimedOut
from ollimg.manifest import Model, Name
from ollimg.progress import OnPreview, Step
from ollimg.runtime.request import GenerateRequest, GenerateResult
from ollimg.server import admission, capabilities, memory

log = logging.getLogger(__name__)

RuntimeFactory = Callable[[Model], Any]
"""Makes a runtime for a model: an object with start(timeout), generate(request, on_step=,
on_preview=), cancel(), stop() and the properties alive, pid, processor, memory. A factory may also
have idle(), called when no request has run or waited for IDLE seconds, and close(), called at
shutdown (ProcessFactory starts and stops its spare runtime with them)."""

FOREVER = 100 * 365 * 86400.0  # longer keep-alives mean "forever"
CANCEL_MIN = 5.0  # seconds a runtime gets at least to honour cancel() before it is stopped
CANCEL_UNKNOWN = 30.0  # ... when no step of this model has been timed yet
IDLE = 5.0  # seconds without a request running or waiting after which the factory's idle() runs


@dataclass(eq=False)
class Runner:
    """One model slot: its runtime (None while not loaded) and who is using or waiting for it."""

    key: str
    model: Model
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    runtime: Any = None
    users: int = 0
    busy: bool = False
    last_used: float = 0.0
    keep_alive: float | None = None
    expires_at: float | None = None
    timer: asyncio.TimerHandle | None = None
    step_seconds_per_pixel: float = 0.0  # the slowest step seen, per pixel of the batch: the cancel deadline

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
        limits: admission.Limits | None = None,
    ):
        self._factory = factory
        self.max_loaded = max(1, config.max_loaded_models() if max_loaded is None else max_loaded)
        self.max_queue = max(0, config.max_queue() if max_queue is None else max_queue)
        self.default_keep_alive = config.keep_alive() if keep_alive == "env" else keep_alive
        self.load_timeout = config.load_timeout() if load_timeout is None else load_timeout
        self._free_memory = free_memory
        self.limits = limits or admission.Limits.from_config()
        self._runners: dict[str, Runner] = {}
        self._pending = 0
        self._seconds = 5.0  # running average of a generation, for Retry-After
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="ollimg-runtime")
        self._idle_timer: asyncio.TimerHandle | None = None

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
        on_preview: OnPreview | None = None,
    ) -> GenerateResult:
        """Runs one generation on the model's runtime (loading it first if needed).

        Callbacks run on the event loop: on_load(seconds spent loading, 0 if warm) once the
        runtime is ready, on_step per finished step, on_preview per preview (a Preview: which one, of which image).
        """
        loop = asyncio.get_running_loop()
        capabilities.check(model, request)
        plan = self._plan(model, request.width, request.height, request.steps, request.n)
        need = self._admit(model, plan)
        async with self._use(model, keep_alive, need) as (runner, load_seconds):
            if on_load:
                on_load(load_seconds)
            rt = runner.runtime
            timing = _StepTiming(runner, plan)

            def stepped(step: Step) -> None:
                timing.stepped()
                if on_step:
                    on_step(step)

            call = functools.partial(
                rt.generate,
                request,
                on_step=_threadsafe(loop, stepped),
                on_preview=_threadsafe(loop, on_preview),
            )
            started = time.monotonic()
            fut = loop.run_in_executor(self._executor, call)
            try:
                result = await asyncio.wait_for(asyncio.shield(fut), self.limits.seconds)
            except (asyncio.CancelledError, TimeoutError) as e:
                timed_out = isinstance(e, TimeoutError)
                log.info("%s generation on %s", "time limit: cancelling" if timed_out else "cancelling", runner.label)
                rt.cancel()
                await self._settle(runner, fut, timing.grace())
                if timed_out:
                    raise TimedOut(f"the generation ran past this server's limit of {self.limits.seconds:.0f} s and was "
                                   "cancelled (OLLIMG_MAX_GENERATION_TIME); ask for fewer steps, images or pixels") from None
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
        need = self._admit(model, self._plan(model, None, None, None, 1, limits=False))
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
        """Seconds a client refused with Busy should wait: the running generation and every waiting
        one, at the running average of a generation's time."""
        return max(1, min(3600, math.ceil(self._seconds * (self._pending + 1))))

    # -- admission -----------------------------------------------------------------------------

    def _plan(self, model: Model, width: int | None, height: int | None, steps: int | None, n: int,
              limits: bool = True) -> admission.Plan:
        """The request's plan at the model's defaults; checked against the limits unless `limits` is False
        (a load: the limits bound what a request asks for, not the model's own defaults)."""
        try:
            defaults = model.config.get("defaults") if isinstance(model.config, dict) else None
        except Exception:  # a config that cannot be read: the runtime will say so; plan with fallbacks
            defaults = None
        bounds = self.limits if limits else admission.Limits(2**62, 2**62, 2**62, None)
        return admission.plan(defaults if isinstance(defaults, dict) else {}, width, height, steps, n, bounds)

    def _admit(self, model: Model, plan: admission.Plan) -> int:
        """The request's memory need beyond what is loaded; InsufficientMemory when it cannot be made to fit."""
        runner = self._runners.get(key(model.name))
        loaded = runner is not None and runner.runtime is not None and runner.model.digest == model.digest
        free = self._free_memory()
        room = None
        if free is not None:
            room = free + sum(memory.on_device(r.runtime) for r in self.running()
                              if r is not runner and r.users == 0 and not r.lock.locked())
        return admission.check_memory(model.name.display(), 0 if loaded else model.size, plan, room, memory.device_label)

    async def close(self) -> None:
        """Stops every runtime (server shutdown)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for runner in list(self._runners.values()):
            self._cancel_timer(runner)
            if runner.runtime is not None:
                runner.runtime.cancel()
                await self._stop(runner)
        self._runners.clear()
        close = getattr(self._factory, "close", None)  # the production factory's spare runtime
        if close is not None:
            await self._call(close)
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
            wait = self.retry_after
            raise Busy(f"server busy: {self._pending} requests are waiting already; retry in about {wait} s", retry_after=wait)
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
            self._idle_soon()
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

    def _idle_soon(self) -> None:
        """Calls the factory's idle() (ProcessFactory: start a spare runtime) once no request has
        run or waited for IDLE seconds, so that its work never competes with a generation."""
        if getattr(self._factory, "idle", None) is None:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(IDLE, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_timer = None
        if not any(r.users for r in self._runners.values()):
            self._factory.idle()

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

    def usage(self, runner: Runner) -> tuple[int, int]:
        """(host bytes, GPU bytes) the runner's runtime holds now: what ps shows and eviction counts."""
        return memory.held(runner.runtime) if runner.runtime is not None else (0, 0)

    async def _settle(self, runner: Runner, fut: asyncio.Future, grace: float) -> None:
        """Waits (through further cancellation) until a cancelled generation has really ended."""
        deadline = time.monotonic() + grace
        while not fut.done():
            try:
                await asyncio.wait({fut}, timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.CancelledError:
                continue
            if not fut.done():
                log.warning("runtime of %s ignored cancel for %.0f s: stopping it", runner.label, grace)
                await asyncio.shield(self._stop(runner))
                break
        if fut.done() and not fut.cancelled():
            fut.exception()  # retrieved: the request is cancelled whatever the runtime said

    async def _call(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


class _StepTiming:
    """Times a generation's steps (on the event loop) and says how long a cancel may take: two of
    its slowest steps so far, or of this model's slowest step per pixel before, at least CANCEL_MIN."""

    def __init__(self, runner: Runner, plan: admission.Plan):
        self.runner, self.pixels = runner, plan.pixels * plan.n
        self.last = time.monotonic()

    def stepped(self) -> None:
        now = time.monotonic()
        per_pixel = (now - self.last) / self.pixels
        self.runner.step_seconds_per_pixel = max(self.runner.step_seconds_per_pixel, per_pixel)
        self.last = now

    def grace(self) -> float:
        if not self.runner.step_seconds_per_pixel:
            return CANCEL_UNKNOWN
        return max(CANCEL_MIN, 2 * self.runner.step_seconds_per_pixel * self.pixels)


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


class ProcessFactory:
    """The production factory: a runtime subprocess (ollimg.runtime.process) per model.

    With OLLIMG_SPARE_RUNTIME on (the default) one worker is kept spawned ahead: it imports torch
    or mlx (and torch's compiler where it will compile) while nothing is asked of it, and the next
    load takes it, so that a load waits for no import. One is spawned when the server starts and,
    once one is taken, when the server is idle again (`idle()`): a spare's start (a second or more
    of CPU) would otherwise slow the generation beside it, whatever its priority, since it runs in
    a session (an autogroup) of its own."""

    def __init__(self, store: Any):
        self.store = store
        self.spare: Any = None
        self.keep_spare = config.spare_runtime()
        self.idle()

    def idle(self) -> None:
        """Nothing runs or waits: spawn a spare unless one is there."""
        if self.keep_spare and (self.spare is None or not self.spare.alive):
            self._spawn_spare()

    def __call__(self, model: Model) -> Any:
        backend, device = self._settings()
        rt, self.spare = self.spare, None
        if rt is None or not rt.alive or (rt.backend, rt.device) != (backend, device):
            if rt is not None:
                _stop_quietly(rt)
            rt = self._process(backend, device)
        else:
            log.info("loading %s in the spare runtime (pid %s)", model.name.display(), rt.pid)
        rt.model, rt.models_dir = model.name.display(), self.store.root  # the runtime parses the name alike
        return rt

    def close(self) -> None:
        rt, self.spare = self.spare, None
        if rt is not None:
            _stop_quietly(rt)

    def _spawn_spare(self) -> None:
        try:
            self.spare = self._process(*self._settings()).spawn()
        except (RuntimeFailed, OSError) as e:
            log.warning("no spare runtime: %s", e)
            return
        log.info("spare runtime started (pid %s)", self.spare.pid)

    @staticmethod
    def _settings() -> tuple[str | None, str | None]:
        backend, device = config.backend(), config.device()
        return None if backend == "auto" else backend, None if device == "auto" else device

    @staticmethod
    def _process(backend: str | None, device: str | None) -> Any:
        try:
            from ollimg.runtime.process import RuntimeProcess
        except ImportError as e:
            raise RuntimeFailed(f"the runtime is not available in this installation ({e})") from None
        return RuntimeProcess(backend=backend, device=device)
