"""Which hosts are this machine. One rule for every place that asks: plain HTTP to a registry on
loopback, the server's Host allowlist, and proxy bypass (as Go's ProxyFromEnvironment, and so
ollama and docker, never send loopback traffic through HTTP_PROXY).
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """localhost, *.localhost, 127.0.0.0/8 or ::1; with or without a port (`[::1]:5000`, `localhost:80`)."""
    name = host.strip()
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    if name.lower() == "localhost" or name.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def no_proxy_mounts(netloc: str) -> dict | None:
    """httpx `mounts` that keep `netloc` off any proxy from the environment when it is loopback."""
    return {f"all://{netloc}": None} if is_loopback(netloc) else None
