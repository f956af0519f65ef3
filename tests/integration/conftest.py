import shutil

import pytest

from tests.registry_proxy import Proxy
from tests.registry_server import BINARY, RegistryServer

USERS = {"alice": "correct-horse-battery"}


def _need_registry() -> None:
    if not shutil.which(BINARY) or not shutil.which("htpasswd"):
        pytest.fail(f"{BINARY} and htpasswd are needed: apt-get install docker-registry apache2-utils (see .ci/run)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A real docker-registry on a free loopback port, shared by the session (tests use their own repos)."""
    _need_registry()
    server = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    """A second docker-registry that requires htpasswd basic auth (users: USERS)."""
    _need_registry()
    server = RegistryServer(tmp_path_factory.mktemp("auth-registry"), users=USERS).start()
    yield server
    server.remove()


@pytest.fixture
def tls_registry(tmp_path):
    """A docker-registry serving HTTPS with a self-signed certificate for 127.0.0.1 (its `certificate`)."""
    _need_registry()
    server = RegistryServer(tmp_path / "tls-registry", tls=True).start()
    yield server
    server.remove()


@pytest.fixture
def proxy_for():
    """proxy_for(registry, **options) -> a started Proxy in front of it, stopped after the test."""
    started = []

    def make(server, **options) -> Proxy:
        proxy = Proxy(server.url, **options).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
