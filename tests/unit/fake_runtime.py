"""A fake runtime for scheduler, server and client unit tests: same interface as RuntimeProcess.

Loading sleeps `load_delay`, each step sleeps `step_delay`, images are small PNG-like byte strings.
Tests steer it through the factory's attributes (crash the next generation, fail loading).
"""

from __future__ import annotations

import threading
import time

from ollimg.errors import Cancelled, RuntimeFailed
from ollimg.progress import Preview, Step
from ollimg.runtime.request import GenerateRequest, GenerateResult


class FakeRuntime:
    def __init__(self, factory: "FakeFactory", name: str):
        self.factory, self.name = factory, name
        self.alive = False
        self.pid = 1000 + len(factory.made)
        self.processor = "CPU"
        self.memory = factory.memory
        self.generations = 0
        self._cancel = threading.Event()

    def start(self, timeout: float) -> None:
        time.sleep(self.factory.load_delay)
        if self.factory.fail_load:
            raise RuntimeFailed("runtime failed to load the model", stderr_tail="RuntimeError: bad weights")
        self.alive = True

    def generate(self, request: GenerateRequest, on_step=None, on_preview=None) -> GenerateResult:
        assert self.alive, "generate on a runtime that is not alive"
        self._cancel.clear()
        self.factory.concurrent += 1
        self.factory.max_concurrent = max(self.factory.max_concurrent, self.factory.concurrent)
        try:
            steps = request.steps or 4
            started = time.monotonic()
            if self.factory.status and on_step:  # what a compiling runtime says before its first step
                on_step(Step(0, steps, 0.0, self.factory.status))
                time.sleep(self.factory.status_delay)
            for i in range(1, steps + 1):
                time.sleep(self.factory.step_delay)
                if self._cancel.is_set():
                    self.factory.cancelled += 1
                    raise Cancelled("generation cancelled")
                if self.factory.crash_at == i:
                    self.factory.crash_at = None
                    self.alive = False
                    raise RuntimeFailed("runtime exited with code -9", stderr_tail="Killed")
                if on_step:
                    on_step(Step(i, steps, time.monotonic() - started))
                if on_preview and request.previews and i == steps // 2:
                    for k in range(request.n):
                        on_preview(Preview(0, k, i, f"\x89PNG preview {k}".encode()))
            seed = 42 if request.seed is None else request.seed
            self.generations += 1
            return GenerateResult(
                images=[f"{request.format}:{self.name}:{seed + k}".encode() for k in range(request.n)],
                seeds=[seed + k for k in range(request.n)], width=request.width or 64, height=request.height or 64,
                steps=steps, guidance=request.guidance or 0.0, timings={"denoise": time.monotonic() - started},
            )
        finally:
            self.factory.concurrent -= 1

    def cancel(self) -> None:
        self._cancel.set()

    def stop(self) -> None:
        self.alive = False
        self.factory.stopped.append(self.name)


class FakeFactory:
    def __init__(self, load_delay: float = 0.0, step_delay: float = 0.0, memory: int = 1000):
        self.load_delay, self.step_delay, self.memory = load_delay, step_delay, memory
        self.made: list[FakeRuntime] = []
        self.stopped: list[str] = []
        self.fail_load = False
        self.status: str | None = None  # a step-0 status sent before the first step
        self.status_delay = 0.0
        self.crash_at: int | None = None
        self.cancelled = 0
        self.concurrent = 0
        self.max_concurrent = 0

    def __call__(self, model) -> FakeRuntime:
        rt = FakeRuntime(self, model.name.display())
        self.made.append(rt)
        return rt

    def loaded(self) -> list[str]:
        return [rt.name for rt in self.made if rt.alive]


def make_model(store, name: str, defaults: dict | None = None):
    """A stored model with a config blob and one small file layer (no real weights)."""
    import json

    from ollimg.manifest import Manifest, Name
    from ollimg.manifest.manifest import CONFIG_TYPE, Descriptor, file_layer

    cfg = json.dumps({"family": "zimage", "defaults": defaults or {"steps": 4}}).encode()
    cfg_digest = store.blobs.put_bytes(cfg)
    data = f"weights of {name}".encode()
    digest = store.blobs.put_bytes(data)
    manifest = Manifest(
        config=Descriptor(mediaType=CONFIG_TYPE, digest=cfg_digest, size=len(cfg)),
        layers=[file_layer("model_index.json", digest, len(data))],
    )
    return store.put_manifest(Name.parse(name), manifest.dump())
