"""Registry credentials and the answers to 401 challenges: HTTP Basic and the Bearer token flow.

`credentials_for` is the one place that decides which credentials go to which host: those of
OLLIMG_REGISTRY_USER/OLLIMG_REGISTRY_PASSWORD go only to the OLLIMG_REGISTRY host, those `ollimg
login HOST` stored (mode 0600) only to HOST; any other host gets none, so a name that points a pull
at another host (`attacker.example/x/y`) cannot draw them out. `Registry.send` attaches them only
to its own origin, and a token realm gets them only over HTTPS or on the registry's own origin.
They never appear in logs, errors or progress: messages name the host only. Bearer tokens are
cached per (realm, service, scope, user) for the process.
Must not import rich, fastapi, torch or mlx.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass

import httpx

from ollimg import config
from ollimg.errors import AuthError, RegistryError, StoreError

log = logging.getLogger(__name__)

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def __repr__(self) -> str:  # never print the password, even in a debugger or traceback
        return "Credentials(<hidden>)"

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()


def normalize_host(host: str) -> str:
    """`https://Registry.example:5000/` -> `registry.example:5000`."""
    return re.sub(r"^[a-z]+://", "", host.strip().lower()).split("/", 1)[0]


def _read_file() -> dict:
    path = config.credentials_file()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        raise StoreError(f"cannot read the registry credentials file {path}; fix or delete it, then run: ollimg login HOST") from None
    return data if isinstance(data, dict) else {}


def _write_file(data: dict) -> None:
    path = config.credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write the registry credentials file {path}: {e.strerror}") from None


def credentials_for(host: str) -> Credentials | None:
    """For the OLLIMG_REGISTRY host the environment's credentials, else the ones `ollimg login` stored
    for `host`; None for any other host."""
    env = config.registry_credentials()
    if env and normalize_host(host) == normalize_host(config.registry_host()):
        return Credentials(*env)
    entry = _read_file().get("auths", {}).get(normalize_host(host))
    if isinstance(entry, dict) and entry.get("user") and entry.get("password"):
        return Credentials(entry["user"], entry["password"])
    return None


def save_credentials(host: str, credentials: Credentials) -> None:
    data = _read_file()
    data.setdefault("auths", {})[normalize_host(host)] = {"user": credentials.user, "password": credentials.password}
    _write_file(data)


def remove_credentials(host: str) -> bool:
    data = _read_file()
    if data.get("auths", {}).pop(normalize_host(host), None) is None:
        return False
    _write_file(data)
    return True


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` -> ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): (quoted if quoted is not None and quoted != "" else bare or "") for k, quoted, bare in _PARAM.findall(rest)}
    return scheme.lower(), params


_tokens: dict[tuple, tuple[str, float]] = {}
_tokens_lock = threading.Lock()


class Auth:
    """The Authorization header for one registry host, renewed when a request gets a 401."""

    def __init__(self, host: str, credentials: Credentials | None):
        self.host = host
        self.credentials = credentials
        self.header: str | None = None
        self._lock = threading.Lock()
        self._rejected: set[str] = set()

    def answer(self, response: httpx.Response, failed: str | None, client: httpx.Client) -> str:
        """The header to retry with after `response` (a 401) to a request sent with `failed`."""
        with self._lock:
            if self.header is not None and self.header != failed:
                return self.header  # another thread already answered the same challenge
            if failed:
                self._rejected.add(failed)
            scheme, params = parse_challenge(response.headers.get("www-authenticate", ""))
            if scheme == "basic":
                header = self._basic()
            elif scheme == "bearer" and params.get("realm"):
                header = self._bearer(params, client)
            else:
                raise AuthError(f"registry {self.host} asks for an authentication scheme ollimg does not support ({scheme or 'none'})")
            if header in self._rejected:
                raise self.denied()
            self.header = header
            return header

    def denied(self) -> AuthError:
        if self.credentials is None:
            return AuthError(f"registry {self.host} requires authentication; run: ollimg login {self.host}")
        return AuthError(
            f"registry {self.host} refused the credentials or denied access; check the name and your credentials "
            f"(ollimg login {self.host}, or OLLIMG_REGISTRY_USER/OLLIMG_REGISTRY_PASSWORD)"
        )

    def _basic(self) -> str:
        if self.credentials is None:
            raise self.denied()
        return self.credentials.basic()

    def _bearer(self, params: dict[str, str], client: httpx.Client) -> str:
        scopes = params.get("scope", "").split()
        user = self.credentials.user if self.credentials else None
        key = (params["realm"], params.get("service", ""), " ".join(scopes), user)
        with _tokens_lock:
            cached = _tokens.get(key)
            if cached and cached[1] > time.monotonic() and "Bearer " + cached[0] not in self._rejected:
                return "Bearer " + cached[0]
        token, lifetime = self._fetch_token(params, scopes, client)
        with _tokens_lock:
            _tokens[key] = (token, time.monotonic() + max(lifetime - 10, 1))
        return "Bearer " + token

    def _fetch_token(self, params: dict[str, str], scopes: list[str], client: httpx.Client) -> tuple[str, float]:
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", s) for s in scopes]
        realm = httpx.URL(params["realm"])
        if self.credentials and realm.scheme != "https" and normalize_host(realm.netloc.decode()) != normalize_host(self.host):
            raise AuthError(f"registry {self.host} sends the credentials' token request to {realm.scheme}://{realm.host}, "
                            "another host over plain HTTP; ollimg sends credentials there only over HTTPS")
        headers = {"Authorization": self.credentials.basic()} if self.credentials else {}
        try:
            response = client.get(params["realm"], params=query, headers=headers)
        except httpx.TransportError as e:
            raise RegistryError(f"cannot reach the token service of registry {self.host}: {type(e).__name__}") from None
        if response.status_code in (401, 403):
            raise self.denied()
        if not response.is_success:
            raise RegistryError(f"the token service of registry {self.host} answered HTTP {response.status_code}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not token or not isinstance(token, str):
            raise RegistryError(f"the token service of registry {self.host} answered without a token")
        log.debug("got a bearer token from %s for scope %s", params["realm"], " ".join(scopes) or "(none)")
        return token, lifetime
