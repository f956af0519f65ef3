"""`login` and `logout`: check credentials against a registry, then keep or forget them."""

from __future__ import annotations

from ollimg.errors import InvalidInput
from ollimg.registry.auth import Credentials, normalize_host, remove_credentials, save_credentials
from ollimg.registry.client import Registry


def login(host: str, user: str, password: str, *, insecure: bool | None = None) -> str:
    """Checks the credentials with `GET /v2/` (through Basic or the token flow), then stores them.

    Returns the normalized host. A refusal raises AuthError and stores nothing.
    """
    host = normalize_host(host)
    if not host or not user or not password:
        raise InvalidInput("login needs a registry host, a user name and a password")
    credentials = Credentials(user, password)
    with Registry(host, insecure=insecure, connections=1, credentials=credentials) as registry:
        registry.ping()
    save_credentials(host, credentials)
    return host


def logout(host: str) -> bool:
    """Forgets the stored credentials of `host`; False when there were none."""
    return remove_credentials(host)
