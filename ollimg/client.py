"""The HTTP client of the native API (httpx), used by the CLI and by Python callers.

Errors come back as the OllimgError subclass named by the wire `code`; a server that does not
answer is ServerUnreachable. Streams (generate, create, pull, push, load) call back per line; save and load
stream archive bytes.
Imports api, config, errors, hosts and progress; never fastapi.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Iterator

import httpx

from ollimg import api, config
from ollimg.errors import OllimgError, ServerUnreachable, by_code
from ollimg.hosts import no_proxy_mounts
from ollimg.progress import OnProgress, OnStep, Progress, Step

CHUNK = 1 << 20  # archive bytes per progress report


class Client:
    def __init__(self, base_url: str | None = None, *, transport: httpx.BaseTransport | None = None, timeout: float = 10.0):
        self.base_url = (base_url or config.base_url()).rstrip("/")
        headers = {"Authorization": f"Bearer {config.api_key()}"} if config.api_key() else {}
        self._http = httpx.Client(
            base_url=self.base_url, transport=transport, headers=headers,
            timeout=httpx.Timeout(timeout, read=None),  # generations and loads take as long as they take
            mounts=None if transport else no_proxy_mounts(httpx.URL(self.base_url).netloc.decode()),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- server --------------------------------------------------------------------------------

    def is_running(self) -> bool:
        try:
            return self._http.get("/", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def version(self) -> str:
        return api.VersionResponse.model_validate(self._request("GET", "/api/version")).version

    # -- generation ----------------------------------------------------------------------------

    def generate(self, model: str, prompt: str, *, on_step: OnStep | None = None, **options: Any) -> api.GenerateResponse:
        """Generates images; options are the GenerateRequest fields (width, height, steps, seed, n, ...)."""
        body = api.GenerateRequest(model=model, prompt=prompt, stream=True, **options)
        final = None
        for obj in self._stream("/api/generate", body.model_dump(exclude_none=True)):
            if obj.get("done"):
                final = api.GenerateResponse.model_validate(obj)
            elif "step" in obj and on_step:
                on_step(Step(obj["step"], obj["total"], obj.get("elapsed", 0.0), obj.get("status")))
        if final is None:
            raise OllimgError("the server closed the stream before the images came")
        return final

    def load(self, model: str, keep_alive: str | float | None = None) -> api.GenerateResponse:
        body = {"model": model, "prompt": "", "stream": False, "keep_alive": keep_alive}
        return api.GenerateResponse.model_validate(self._request("POST", "/api/generate", json=body))

    def unload(self, model: str) -> None:
        self._request("POST", "/api/generate", json={"model": model, "prompt": "", "keep_alive": 0, "stream": False})

    # -- models --------------------------------------------------------------------------------

    def tags(self) -> list[api.ModelInfo]:
        return api.TagsResponse.model_validate(self._request("GET", "/api/tags")).models

    def ps(self) -> list[api.RunningModel]:
        return api.PsResponse.model_validate(self._request("GET", "/api/ps")).models

    def show(self, model: str, verbose: bool = False) -> api.ShowResponse:
        return api.ShowResponse.model_validate(self._request("POST", "/api/show", json={"model": model, "verbose": verbose}))

    def delete(self, model: str) -> api.DeleteResponse:
        return api.DeleteResponse.model_validate(self._request("DELETE", "/api/delete", json={"model": model}))

    def copy(self, source: str, destination: str) -> None:
        self._request("POST", "/api/copy", json={"source": source, "destination": destination})

    def create(self, model: str, source: str, *, quantize: str | None = None, dtype: str | None = None,
               on_progress: OnProgress | None = None) -> api.ProgressResponse:
        """Imports `source` (a path on the server's machine); the result carries digest and byte counts."""
        body = {"model": model, "from": source, "quantize": quantize, "dtype": dtype}
        return self._progress("/api/create", body, on_progress)

    def pull(self, model: str, *, insecure: bool | None = None, on_progress: OnProgress | None = None) -> api.ProgressResponse:
        return self._progress("/api/pull", {"model": model, "insecure": insecure}, on_progress)

    def push(self, model: str, *, insecure: bool | None = None, on_progress: OnProgress | None = None) -> api.ProgressResponse:
        return self._progress("/api/push", {"model": model, "insecure": insecure}, on_progress)

    def save(self, models: list[str], *, format: str = "tar.zst", level: int | None = None,
             on_progress: OnProgress | None = None) -> Iterator[bytes]:
        """The server's archive of `models` (POST /api/save), as it arrives. Progress: `saving`
        with bytes received of the total (known for a plain tar, which has a Content-Length)."""
        body = {"models": models, "format": format, "level": level}
        try:
            with self._http.stream("POST", "/api/save", json={k: v for k, v in body.items() if v is not None}) as response:
                if response.status_code >= 400:
                    raise _error(response.status_code, response.read())
                length = response.headers.get("content-length")
                total = int(length) if length else None
                done = shown = 0
                if on_progress:
                    on_progress(Progress("saving", None, 0, total))
                for chunk in response.iter_raw(CHUNK):
                    yield chunk
                    done += len(chunk)
                    if on_progress and (done - shown >= CHUNK or done == total):
                        shown = done
                        on_progress(Progress("saving", None, done, total))
        except httpx.RemoteProtocolError as e:
            raise OllimgError(f"the server's archive stream broke off ({e}); see the server's log") from None
        except httpx.TransportError as e:
            raise self._unreachable(e) from None

    def load_archive(self, chunks: Iterable[bytes], total: int | None = None, on_progress: OnProgress | None = None) -> api.LoadResponse:
        """Sends an archive's bytes to POST /api/load. Progress: `sending` with the bytes sent (of
        `total`) while they go (the server loads them as they arrive), then the server's own lines
        (`loading <12hex>`, `skipping <12hex>`, `writing manifest`), which httpx reads only once the
        whole body is sent."""
        self.version()  # a wrong API key answers here, not as a broken pipe halfway through a large upload

        def body() -> Iterator[bytes]:
            done = shown = 0
            if on_progress:
                on_progress(Progress("sending", None, 0, total))
            for chunk in chunks:
                yield chunk
                done += len(chunk)
                if on_progress and (done - shown >= CHUNK or done == total):
                    shown = done
                    on_progress(Progress("sending", None, done, total))

        headers = {"Content-Type": "application/octet-stream"}
        if total is not None:
            headers["Content-Length"] = str(total)
        last = None
        for last in self._stream("/api/load", content=body(), headers=headers):
            if on_progress and last.get("status") != "success":
                on_progress(Progress(str(last.get("status")), last.get("digest"), last.get("completed"), last.get("total")))
        if last is None or last.get("status") != "success":
            raise OllimgError("the server closed the /api/load stream before it finished")
        return api.LoadResponse.model_validate(last)

    # -- plumbing ------------------------------------------------------------------------------

    def _progress(self, path: str, body: dict, on_progress: OnProgress | None) -> api.ProgressResponse:
        last = None
        for obj in self._stream(path, {k: v for k, v in body.items() if v is not None}):
            last = api.ProgressResponse.model_validate(obj)
            if on_progress:
                on_progress(Progress(last.status, last.digest, last.completed, last.total))
        if last is None or last.status != "success":
            raise OllimgError(f"the server closed the {path} stream before it finished")
        return last

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        if response.status_code >= 400:
            raise _error(response.status_code, response.read())
        return response.json() if response.content else None

    def _stream(self, path: str, body: dict | None = None, **kwargs: Any) -> Iterator[dict]:
        """POSTs `body` as JSON (or what kwargs say: content, headers) and yields the NDJSON lines."""
        try:
            with self._http.stream("POST", path, json=body, **kwargs) as response:
                if response.status_code >= 400:
                    raise _error(response.status_code, response.read())
                for text in response.iter_lines():
                    if not text.strip():
                        continue
                    obj = json.loads(text)
                    if "error" in obj:
                        raise _rebuild(obj)
                    yield obj
        except httpx.TransportError as e:
            raise self._unreachable(e) from None

    def _unreachable(self, e: Exception) -> ServerUnreachable:
        return ServerUnreachable(f"could not reach the ollimg server at {self.base_url} ({e}); start it with: ollimg serve")


def _error(status: int, content: bytes) -> OllimgError:
    try:
        obj = json.loads(content)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and "error" in obj:
        return _rebuild(obj)
    text = content.decode(errors="replace").strip()[:500]
    return OllimgError(f"server answered HTTP {status}: {text or 'no details'}", code="http_error")


def _rebuild(obj: dict) -> OllimgError:
    """The exception for a wire error: the class its code names, the server's message."""
    error = obj.get("error")
    if isinstance(error, dict):  # OpenAI shape
        message, code = str(error.get("message")), str(error.get("code") or "error")
    else:
        message, code = str(error), str(obj.get("code") or "error")
    cls: Callable[..., OllimgError] = by_code(code)
    e = cls(message)
    e.code = code
    return e
