"""The runtime subprocess, parent side: `RuntimeProcess` starts `python -m ollimg.runtime`, waits
until the model is loaded, sends generation requests and turns the worker's frames back into
callbacks, results and typed errors (with the tail of the worker's stderr).

Protocol: see `ollimg/runtime/__main__.py`. Thread-safety: `generate` runs one request at a time
(call it from a worker thread); `cancel` and `stop` may be called from any thread. Imports no torch
or mlx (the server imports this).
"""

from __future__ import annotations

import base64
import collections
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from ollimg.errors import Cancelled, OllimgError, RuntimeFailed, by_code
from ollimg.progress import OnPreview, Preview, Step
from ollimg.runtime.channel import Channel
from ollimg.runtime.request import GenerateRequest, GenerateResult

log = logging.getLogger(__name__)
TAIL_LINES = 60
_EOF = object()


class RuntimeProcess:
    def __init__(self, model: str | None = None, *, models_dir: Path | None = None, backend: str | None = None,
                 device: str | None = None, dtype: str | None = None):
        self.model, self.models_dir = model, models_dir
        self.backend, self.device, self.dtype = backend, device, dtype
        self.processor: str | None = None
        self.memory: int = 0  # bytes of the loaded weights
        self.gpu_memory: int = 0  # GPU bytes the runtime's allocator holds, as of its last ready/result frame
        self.load_seconds: float | None = None
        self.prepared = threading.Event()  # the worker's imports are done (its "prepared" frame came)
        self._proc: subprocess.Popen | None = None
        self._channel: Channel | None = None
        self._frames: queue.Queue = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._busy = threading.Lock()
        self._stopping = False

    # --- lifecycle ---
    def spawn(self) -> "RuntimeProcess":
        """Start the worker: it imports the runtime and its backend, then waits for `start` to name
        the model. Spawned ahead of a request (the server's spare), a load waits for no import."""
        args = [sys.executable, "-m", "ollimg.runtime", "--parent-pid", str(os.getpid())]
        for flag, value in (("--backend", self.backend), ("--device", self.device)):
            if value is not None:
                args += [flag, str(value)]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env=env, start_new_session=True)
        self._channel = Channel(self._proc.stdout, self._proc.stdin)
        threading.Thread(target=self._read_frames, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        return self

    def start(self, timeout: float) -> None:
        """Load the model in the worker (spawned now unless it was before) and block until it is
        loaded; typed error with the stderr tail if not."""
        if self.model is None:
            raise ValueError("RuntimeProcess.start needs a model")
        if self._proc is None:
            self.spawn()
        try:
            self._channel.send({"type": "load", "model": str(self.model), "dtype": self.dtype,
                                "models_dir": str(self.models_dir) if self.models_dir is not None else None})
        except OSError:
            pass  # the worker is gone: its end of the frames says so below
        deadline = time.monotonic() + timeout
        try:
            message = self._frames.get(timeout=max(0.0, deadline - time.monotonic()))
            while message is not _EOF and message.get("type") == "prepared":
                message = self._frames.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            self._kill()
            raise RuntimeFailed(f"model {self.model} did not load within {timeout:.0f}s", stderr_tail=self.stderr_tail())
        if message is _EOF or message.get("type") != "ready":
            self._kill()
            raise self._failure(message, f"runtime for {self.model} failed while loading")
        self.processor, self.memory = message["processor"], int(message["memory"])
        self.gpu_memory = int(message.get("gpu_memory") or 0)
        self.load_seconds = message.get("load_seconds")

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it has not after `timeout` seconds."""
        self._stopping = True
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            self._channel.send({"type": "stop"})
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def host_memory(self) -> int | None:
        """Resident bytes of the worker process now (VmRSS), or None where /proc cannot tell."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError, IndexError):
            return None

    def stderr_tail(self) -> str:
        time.sleep(0.05)  # let the stderr reader catch the last lines of a dying process
        return "\n".join(self._stderr)

    # --- requests ---
    def generate(self, request: GenerateRequest, on_step: Callable[[Step], None] | None = None,
                 on_preview: OnPreview | None = None) -> GenerateResult:
        message = self._exchange({"type": "generate", "request": request.to_json()}, "result", on_step, on_preview)
        self.gpu_memory = int(message.get("gpu_memory") or self.gpu_memory)
        return GenerateResult.from_json(message["result"])

    def calibrate(self, prompts: list[str], steps: int | None, on_step: Callable[[Step], None] | None = None) -> dict:
        """Record TeaCache's calibration runs over `prompts` in the worker; the Calibration JSON."""
        return self._exchange({"type": "calibrate", "prompts": prompts, "steps": steps}, "calibration",
                              on_step, None)["calibration"]

    def _exchange(self, request: dict, final: str, on_step: Callable[[Step], None] | None,
                  on_preview: OnPreview | None) -> dict:
        """Send one request; pass its step and preview frames on until the `final` one, returned."""
        with self._busy:
            if not self.alive:
                raise RuntimeFailed(f"runtime for {self.model} is not running", stderr_tail=self.stderr_tail())
            try:
                self._channel.send(request)
            except OSError:
                raise RuntimeFailed(f"runtime for {self.model} exited", stderr_tail=self.stderr_tail()) from None
            while True:
                message = self._frames.get()
                kind = message.get("type") if message is not _EOF else None
                if kind == final:
                    return message
                if kind == "step" and on_step is not None:
                    on_step(Step(message["step"], message["total"], message.get("elapsed", 0.0), message.get("status")))
                elif kind == "preview" and on_preview is not None:
                    on_preview(Preview(message["index"], message.get("image_index", 0), message.get("step", 0),
                                       base64.b64decode(message["image"])))
                elif kind not in ("step", "preview"):
                    raise self._failure(message, f"runtime for {self.model} failed")

    def cancel(self) -> None:
        """Cancel the running generation (it stops before its next step); harmless when idle."""
        if self.alive:
            try:
                self._channel.send({"type": "cancel"})
            except OSError:
                pass

    # --- internals ---
    def _failure(self, message, context: str) -> OllimgError:
        tail = self.stderr_tail()
        if message is _EOF or message is None:
            code = self._proc.wait(5) if self._proc else None
            return RuntimeFailed(f"{context}: the process exited (code {code})", stderr_tail=tail)
        cls = by_code(message.get("code", "runtime_failed"))
        text = message.get("message") or context
        if issubclass(cls, RuntimeFailed):
            return cls(text, stderr_tail=tail)
        error = cls(text, param=message.get("param")) if cls is not Cancelled else Cancelled(text)
        error.stderr_tail = tail
        return error

    def _read_frames(self) -> None:
        try:
            while (message := self._channel.receive()) is not None:
                if message.get("type") == "prepared":
                    self.prepared.set()
                self._frames.put(message)
        except (OSError, ValueError):
            pass
        self._frames.put(_EOF)

    def _read_stderr(self) -> None:
        for raw in self._proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._stderr.append(line)
            log.debug("runtime %s: %s", self.pid, line)

    def _kill(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
