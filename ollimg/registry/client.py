"""HTTP to one OCI registry host: base URL, Accept headers, auth on 401, retries and errors.

`Registry` owns the one httpx.Client of a pull or push (shared by its worker threads), and the
direct connections that carry plain blob bodies (`get_blob`, see direct.py). HTTPS by default; plain HTTP with `insecure=True` and automatically for loopback hosts. Knows the
distribution API's URLs and error bodies, not the store. Must not import rich, fastapi, torch or mlx.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
from typing import Callable, Iterable, TypeVar

import httpx

from ollimg import __version__
from ollimg.errors import AuthError, OllimgError, RegistryError
from ollimg.hosts import is_loopback, no_proxy_mounts
from ollimg.registry.auth import Auth, Credentials, credentials_for
from ollimg.registry.direct import Body, DirectPool, proxied

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
ATTEMPTS = 6
T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


class Transient(RegistryError):
    """A failure worth retrying: a 5xx or 429 answer. Surfaces as RegistryError when retries run out."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Registry:
    """One registry host. Use as a context manager; `send` is safe from several threads."""

    def __init__(self, host: str, *, insecure: bool | None = None, connections: int = 8,
                 credentials: Credentials | None = None):
        self.host = host
        plain = insecure if insecure is not None else is_loopback(host)
        self.base = f"{'http' if plain else 'https'}://{host}"
        self.auth = Auth(host, credentials if credentials is not None else credentials_for(host))
        user_agent = f"ollimg/{__version__}"
        self.http = httpx.Client(
            timeout=httpx.Timeout(30.0, read=60.0),
            limits=httpx.Limits(max_connections=connections + 4, max_keepalive_connections=connections + 4),
            follow_redirects=True,  # httpx drops Authorization when a redirect leaves the origin (CDNs)
            headers={"User-Agent": user_agent},
            mounts=no_proxy_mounts(host),
        )
        self.direct = None if proxied(self.base) else DirectPool(self.base, user_agent, timeout=60.0)

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()
        if self.direct is not None:
            self.direct.close()

    def url(self, repository: str, *parts: str) -> str:
        return f"{self.base}/v2/{repository}/" + "/".join(parts)

    def send(self, method: str, url: str | httpx.URL, *, headers: dict | None = None,
             content: bytes | Callable[[], Iterable[bytes]] | None = None, stream: bool = False) -> httpx.Response:
        """One request, authenticated: a 401 is answered (Basic or Bearer) and the request resent.

        `content` may be a callable that makes a fresh body, so a streamed body can be resent.
        A streamed response must be closed by the caller.
        """
        header = self.auth.header
        own = self.owns(url)
        for _ in range(3):
            request_headers = dict(headers or {})
            if header and own:
                request_headers["Authorization"] = header
            body = content() if callable(content) else content
            request = self.http.build_request(method, url, headers=request_headers, content=body)
            try:
                response = self.http.send(request, stream=stream)
            except httpx.UnsupportedProtocol:
                raise RegistryError(f"invalid registry URL {request.url}") from None
            if response.status_code != 401 or not own:
                return response
            response.close()
            header = self.auth.answer(response, header, self.http)
        raise self.auth.denied()

    def owns(self, url: str | httpx.URL) -> bool:
        """Whether `url` is on this registry's origin: the only place its Authorization header goes
        (an upload Location or a redirect may point elsewhere)."""
        url, base = httpx.URL(url), httpx.URL(self.base)
        return (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)

    def get_blob(self, url: str, what: str, headers: dict | None = None) -> "Body | HttpxBody":
        """A successful GET of a blob (200, or 206 for a Range), to be closed by the caller.

        Straight off the socket when the registry answers the plain request with the body;
        otherwise (401, redirect, error) the request goes again through `send`.
        """
        if self.direct is not None and self.owns(url):
            header = self.auth.header
            body = self.direct.get(url, {**(headers or {}), **({"Authorization": header} if header else {})})
            if body is not None:
                return body
        return HttpxBody(check(self.send("GET", url, headers=headers, stream=True), what))

    def ping(self) -> None:
        """GET /v2/: checks that the host speaks the registry API and that the credentials work."""
        response = retrying(lambda: check(self.send("GET", f"{self.base}/v2/"), f"registry {self.host}"), self.host)
        response.close()


class HttpxBody:
    """A streamed httpx response with the same face as direct.Body: status, headers, chunks, close."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self.status_code = response.status_code
        self.headers = response.headers

    def chunks(self) -> Iterable[bytes]:
        return self.response.iter_bytes()

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> "HttpxBody":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resolve(response: httpx.Response) -> httpx.URL:
    """The upload URL a POST/PATCH answered with (the registry's Location, relative or absolute)."""
    location = response.headers.get("location")
    if not location:
        raise RegistryError(f"registry answered {response.request.method} {response.request.url.path} without a Location")
    return response.request.url.join(location)


def error_detail(response: httpx.Response) -> str:
    """`CODE: message` from the registry's error body, or the HTTP status."""
    try:
        response.read()
        errors = response.json().get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors if isinstance(e, dict)]
        detail = "; ".join(p for p in parts if p)[:300]
    except (ValueError, AttributeError, httpx.HTTPError):
        detail = ""
    return f"HTTP {response.status_code}" + (f" ({detail})" if detail else "")


def check(response: httpx.Response, what: str) -> httpx.Response:
    """Returns a successful response; turns any other into the error it stands for (and closes it)."""
    if response.is_success:
        return response
    detail = error_detail(response)
    response.close()
    status = response.status_code
    if status == 429 or status >= 500:
        retry_after = response.headers.get("retry-after", "")
        raise Transient(f"{what}: {detail}", float(retry_after) if retry_after.isdigit() else None)
    if status in (401, 403):
        raise AuthError(f"{what}: access denied, {detail}")
    raise RegistryError(f"{what}: {detail}")


def behind(error: BaseException, kind: type[E]) -> E | None:
    """The `kind` exception behind `error` (its chain of causes), if there is one."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def retrying(fn: Callable[[], T], what: str, stop: threading.Event | None = None) -> T:
    """Calls `fn` until it succeeds; retries connection errors, 5xx and 429 with backoff, never 4xx,
    a host name that does not resolve, or a certificate that is not trusted."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return fn()
        except (httpx.TransportError, Transient) as e:
            unknown = behind(e, socket.gaierror)
            if unknown is not None and unknown.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
                raise RegistryError(f"{what}: the host name does not resolve ({unknown.strerror})") from None
            certificate = behind(e, ssl.SSLCertVerificationError)
            if certificate is not None:
                raise RegistryError(
                    f"{what}: its TLS certificate is not trusted ({certificate.verify_message}); point SSL_CERT_FILE "
                    "at the certificate or its CA, or use --insecure for a registry that speaks plain HTTP"
                ) from None
            reason = str(e) if isinstance(e, OllimgError) else f"cannot reach {what}: {type(e).__name__}: {e}"
            if attempt == ATTEMPTS or (stop is not None and stop.is_set()):
                raise RegistryError(f"{reason} (gave up after {attempt} tries)") from None
            delay = min(0.1 * 2 ** (attempt - 1), 5.0) * random.uniform(0.5, 1.5)
            if isinstance(e, Transient) and e.retry_after is not None:
                delay = min(e.retry_after, 30.0)
            log.info("%s; retrying in %.1f s", reason, delay)
            if stop is not None:
                stop.wait(delay)
            else:
                threading.Event().wait(delay)
    raise AssertionError("unreachable")
