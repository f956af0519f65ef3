"""The runtime subprocess (worker side): `python -m ollimg.runtime [--backend B] [--device D]`.

Starts, imports the runtime and its backend while it waits for a model (a `prepare` thread), loads
the one model its first frame names, then serves requests from its parent over stdin/stdout frames
(`ollimg/runtime/channel.py`); the parent side is `ollimg/runtime/process.py`. The server starts one
ahead of any request (its spare), so that a load does not wait for `import torch`.

  parent -> worker: {"type": "load", "model", "models_dir", "dtype"} (first, once)
                    {"type": "generate", "request": {...}} | {"type": "cancel"} | {"type": "stop"}
                    {"type": "calibrate", "prompts": [...], "steps": N | null} (TeaCache)
  worker -> parent: {"type": "prepared", "seconds"} (the imports are done; before or after a load frame)
                    {"type": "ready", "processor", "memory", "gpu_memory", "load_seconds"}
                    {"type": "step", "step", "total", "elapsed"[, "status" on step 0]}
                    {"type": "preview", "index", "image_index", "step", "image" (base64 PNG)}
                    {"type": "result", "result": GenerateResult JSON, "gpu_memory"}
                    {"type": "calibration", "calibration": Calibration JSON}
                    {"type": "error", "code", "message", "param" (the request field at fault, if any)}

Generation runs on the main thread; a reader thread takes `cancel` (checked between steps),
`stop` and end of input. The worker exits when asked, when stdin closes and when its parent
process dies (a watchdog compares getppid() with the parent's pid). Logs go to stderr, which the
parent keeps a tail of. Exceptions are caught here, at the process edge, and become error frames.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import queue
import sys
import threading
import time

from ollimg.errors import Cancelled, InvalidInput, OllimgError, OutOfMemory, RuntimeFailed

log = logging.getLogger("ollimg.runtime.worker")


def _error(e: BaseException) -> dict:
    if isinstance(e, OllimgError):
        return {"type": "error", "code": e.code, "message": e.message, **({"param": e.param} if e.param else {})}
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return {"type": "error", "code": OutOfMemory.code, "message": f"out of memory: {str(e).splitlines()[0] if str(e) else ''}"}
    return {"type": "error", "code": RuntimeFailed.code, "message": f"{type(e).__name__}: {e}"}


def _gpu_memory() -> int:
    """GPU bytes torch's caching allocator holds (0 without CUDA); the CUDA context itself is not counted."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0
    return int(sum(torch.cuda.memory_reserved(i) for i in range(torch.cuda.device_count())))


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            log.warning("parent process %d is gone; exiting", parent)
            os._exit(0)
        time.sleep(0.5)


class Worker:
    def __init__(self, channel, pipeline):
        self.channel, self.pipeline = channel, pipeline
        self.requests: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()

    def read(self) -> None:
        """Reader thread: queue generate requests, flag cancels; stop or EOF ends the worker."""
        while True:
            try:
                message = self.channel.receive()
            except (OSError, ValueError):
                message = None
            if message is None or message.get("type") == "stop":
                self.cancelled.set()
                self.requests.put(None)
                return
            if message.get("type") == "cancel":
                self.cancelled.set()
            elif message.get("type") in ("generate", "calibrate"):
                self.cancelled.clear()  # here, not in serve(): a cancel that follows the request must stick
                self.requests.put(message)

    def serve(self) -> None:
        while True:
            message = self.requests.get()
            if message is None:
                return
            try:
                if message["type"] == "calibrate":
                    calibration = self.calibrate(message.get("prompts"), message.get("steps"))
                    self.channel.send({"type": "calibration", "calibration": calibration.to_json()})
                else:
                    result = self.generate(message.get("request") or {})
                    self.channel.send({"type": "result", "result": result.to_json(), "gpu_memory": _gpu_memory()})
            except Exception as e:  # process edge: every failure becomes an error frame
                if not isinstance(e, OllimgError):
                    log.exception("generation failed")
                self.channel.send(_error(e))

    def on_step(self, step) -> None:
        if self.cancelled.is_set():
            raise Cancelled("generation cancelled")
        self.channel.send({"type": "step", **step.to_json()})

    def calibrate(self, prompts, steps):
        from ollimg.runtime.teacache import calibrate

        if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InvalidInput("calibration prompts must be a non-empty list of non-empty strings")
        if steps is not None and (not isinstance(steps, int) or not 3 <= steps <= 1000):
            raise InvalidInput(f"invalid steps {steps!r}: calibration needs 3 to 1000")
        return calibrate(self.pipeline, prompts, steps, on_step=self.on_step)

    def generate(self, raw: dict):
        from ollimg.runtime.images import Parameters, encode
        from ollimg.runtime.request import GenerateRequest, GenerateResult
        from ollimg.runtime.teacache import refuse_unsupported

        try:
            req = GenerateRequest.from_json(raw)
        except TypeError as e:
            raise InvalidInput(f"invalid request: {e}") from None
        if req.format.lower() not in ("png", "jpeg", "jpg", "webp"):
            raise InvalidInput(f"unsupported output format {req.format!r}: use png, jpeg or webp")

        previews = iter(range(req.previews))

        def on_preview(step: int, rgb) -> None:
            """One frame per image of the batch, each naming its image (`image_index`)."""
            from PIL import Image

            index = next(previews)
            for image_index, pixels in enumerate(rgb):
                png = encode(Image.fromarray(pixels, "RGB"), None, "png", compression=10)
                self.channel.send({"type": "preview", "index": index, "image_index": image_index, "step": step,
                                   "image": base64.b64encode(png).decode("ascii")})

        options = {}
        if req.teacache is not None:
            refuse_unsupported(self.pipeline)
            options["teacache"] = req.teacache
        edit = self._edit(req)
        result = self.pipeline.generate(
            req.prompt, negative_prompt=req.negative_prompt, width=req.width, height=req.height, steps=req.steps,
            guidance=req.guidance, seed=req.seed, n=req.n, on_step=self.on_step, previews=req.previews,
            on_preview=on_preview if req.previews else None, **options, **edit,
        )
        mark = time.perf_counter()
        images = []
        for image, seed in zip(result.images, result.seeds):
            params = Parameters(req.prompt, req.negative_prompt, result.steps, result.guidance, seed, result.width,
                                result.height, req.model_name or self.pipeline.name, self.pipeline.digest,
                                teacache=req.teacache, steps_reused=int(result.timings.get("steps_reused", 0)),
                                strength=getattr(result, "strength", None), source_digests=tuple(req.image_digests))
            images.append(encode(image, params, req.format, req.compression))
        result.timings["encode"] = time.perf_counter() - mark
        return GenerateResult(images, result.seeds, result.width, result.height, result.steps, result.guidance,
                              req.format.lower(), result.timings, getattr(result, "strength", None))

    def _edit(self, req) -> dict:
        """The pipeline's edit arguments (PIL images) and per-request CFG knobs, refused when its
        model cannot take them."""
        import inspect
        import io

        from PIL import Image

        accepted = inspect.signature(self.pipeline.generate).parameters
        knobs = {k: getattr(req, k) for k in ("cfg_truncation", "cfg_normalization") if getattr(req, k) is not None}
        unknown = [k for k in knobs if k not in accepted]
        if unknown:
            raise InvalidInput(f"model {req.model_name or self.pipeline.name} has no {' or '.join(unknown)}")
        if not req.images:
            if req.mask is not None or req.strength is not None:
                raise InvalidInput("mask and strength need an input image")
            return knobs
        wanted = ["images"] + [k for k in ("mask", "strength") if getattr(req, k) is not None]
        missing = [k for k in wanted if k not in accepted]
        if missing:
            what = "input images" if "images" in missing else " or ".join(missing)
            raise InvalidInput(f"model {req.model_name or self.pipeline.name} cannot edit images: it takes no {what}",
                               param="model")
        edit = {**knobs, "images": [Image.open(io.BytesIO(base64.b64decode(b))) for b in req.images]}
        if req.mask is not None:
            edit["mask"] = Image.open(io.BytesIO(base64.b64decode(req.mask)))
        if req.strength is not None:
            edit["strength"] = req.strength
        return edit


def _prepare(channel, backend: str | None, device: str | None, asked: threading.Event) -> None:
    """Imports what a load will need, and what later generations need unless a model has been
    asked for by then (`asked`); a failure here is left for the load to meet and report."""
    started = time.perf_counter()
    try:
        from ollimg.runtime import prepare

        prepare(backend, device, ahead=False)
        if not asked.is_set():
            prepare(backend, device)
        else:
            log.info("a model was asked for before the runtime was prepared: the compiler's imports wait")
    except Exception as e:  # the load imports the same and says what is wrong
        log.info("preparing the runtime failed (%s: %s); the load will retry", type(e).__name__, e)
    seconds = time.perf_counter() - started
    log.info("runtime prepared in %.2f s", seconds)
    try:
        channel.send({"type": "prepared", "seconds": seconds})
    except OSError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ollimg.runtime")
    parser.add_argument("--backend")
    parser.add_argument("--device")
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    # Frames go to the real stdout; anything else printed to fd 1 lands on stderr instead.
    from ollimg.runtime.channel import Channel

    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    channel = Channel(sys.stdin.buffer, out)
    threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()
    asked = threading.Event()
    preparing = threading.Thread(target=_prepare, args=(channel, args.backend, args.device, asked), name="prepare",
                                 daemon=True)
    preparing.start()

    try:
        message = channel.receive()
    except (OSError, ValueError):
        message = None
    asked.set()
    if message is None or message.get("type") == "stop":
        return 0  # a spare that was never used
    if message.get("type") != "load" or not isinstance(message.get("model"), str):
        channel.send({"type": "error", "code": RuntimeFailed.code, "message": "the first frame must name the model to load"})
        return 1
    preparing.join()  # not two threads importing the same modules at once

    from pathlib import Path

    from ollimg.runtime import load

    models_dir = message.get("models_dir")
    try:
        pipeline = load(message["model"], backend=args.backend, device=args.device, dtype=message.get("dtype"),
                        models_dir=Path(models_dir) if models_dir else None)
    except Exception as e:  # process edge
        if not isinstance(e, OllimgError):
            log.exception("loading %s failed", message["model"])
        channel.send(_error(e))
        return 1
    channel.send({"type": "ready", "processor": pipeline.backend.processor, "memory": pipeline.backend.memory(),
                  "gpu_memory": _gpu_memory(), "load_seconds": pipeline.load_seconds})
    log.info("loaded %s on %s in %.1fs", pipeline.name, pipeline.backend.processor, pipeline.load_seconds)
    worker = Worker(channel, pipeline)
    threading.Thread(target=worker.read, daemon=True).start()
    worker.serve()
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except (BrokenPipeError, KeyboardInterrupt):
        code = 0
    sys.stdout.flush()
    os._exit(code)
