"""Helpers the route modules share: the app's store and scheduler, model lookup, NDJSON lines."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import Request

import ollimg
from ollimg import api, builtin, config, models
from ollimg.errors import InvalidInput, ModelNotFound, OllimgError
from ollimg.manifest import Model, Name, Store
from ollimg.server.scheduler import Scheduler

NDJSON = "application/x-ndjson"


def store(request: Request) -> Store:
    return request.app.state.store


def scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler


def get_model(request: Request, text: str) -> Model:
    """The stored model a request names (InvalidName 400, ModelNotFound 404).

    A built-in model (`shapes`) that is not in the store yet is imported on first use. A typo gets
    the close name in the message.
    """
    name = Name.parse(text)
    try:
        return builtin.get_or_import(store(request), name)
    except ModelNotFound:
        known = [m.name.display() for m in store(request).models()]
        known += [Name.parse(b).display() for b in builtin.builtin_models()]
        raise models.not_found(name, known) from None


def line(obj: Any) -> bytes:
    data = obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else obj
    return (json.dumps(data, separators=(",", ":")) + "\n").encode()


def wire_message(e: OllimgError) -> str:
    """The message a client sees: the error's message plus, from the runtime's stderr, only its last
    line (the exception's summary), with the server's own paths taken out (the store root, the
    package, the home directory). Tracebacks and the whole stderr tail stay in the server log."""
    text = e.message
    last = next((ln.strip() for ln in reversed((getattr(e, "stderr_tail", "") or "").splitlines()) if ln.strip()), "")
    if last and last not in text:
        text = f"{text}: {last[:300]} (the server log has the details)"
    for path, shown in _private_paths():
        text = text.replace(path, shown)
    return text


def _private_paths() -> list[tuple[str, str]]:
    paths = []
    with contextlib.suppress(OllimgError, OSError, RuntimeError):
        root = config.models_dir()
        paths += [(str(root.resolve()), "$OLLIMG_MODELS"), (str(root), "$OLLIMG_MODELS")]
    paths += [(str(Path(ollimg.__file__).resolve().parent), "<ollimg>")]
    with contextlib.suppress(RuntimeError, KeyError):
        home = str(Path.home())
        if len(home) > 1:
            paths.append((home, "~"))
    return paths


def without_paths(info: dict) -> dict:
    """A model's config or info for the wire: the import source's directory on the server is left out."""
    source = info.get("source")
    if isinstance(source, dict) and "path" in source:
        info = {**info, "source": {k: v for k, v in source.items() if k != "path"}}
    return info


def internal_error(e: BaseException) -> OllimgError:
    """What a client sees of an unexpected exception: its kind only; the traceback goes to the log."""
    return OllimgError(f"internal error ({type(e).__name__}); the server log has the details", code="internal")


def error_line(e: OllimgError) -> bytes:
    return line(api.Error(error=wire_message(e), code=e.code, param=e.param))


def openai_error(e: OllimgError, status: int, param: str | None = None) -> api.OpenAIError:
    """OpenAI's error shape: type from the status, code `invalid_value` for bad input."""
    if status == 401:
        kind = "authentication_error"
    elif status == 429:
        kind = "rate_limit_error"
    else:
        kind = "server_error" if status >= 500 else "invalid_request_error"
    code = "invalid_value" if isinstance(e, InvalidInput) and e.code == InvalidInput.code else e.code
    return api.OpenAIError(error=api.OpenAIErrorBody(message=wire_message(e), type=kind, param=param, code=code))


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def iso(ts: float | datetime | None) -> str | None:
    if ts is None:
        return None
    if isinstance(ts, datetime):
        return ts.astimezone(timezone.utc).isoformat()
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def details(model: Model) -> api.ModelDetails:
    """Display details from the model's config blob (missing keys stay empty)."""
    try:
        cfg = model.config
    except OllimgError:
        cfg = {}
    count = cfg.get("parameter_count")
    size = cfg.get("parameter_size") or (_human_count(count) if isinstance(count, (int, float)) else "")
    return api.ModelDetails(
        format=str(cfg.get("model_format") or cfg.get("format") or "safetensors"),
        family=str(cfg.get("family") or cfg.get("architecture") or cfg.get("_class_name") or ""),
        parameter_size=str(size),
        quantization_level=str(cfg.get("quantization") or cfg.get("dtype") or ""),
    )


def _human_count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))
