"""The reliability suite: random kills, a malicious registry, concurrency and schemathesis against a
live server. Short by default (CI runs it with the rest); OLLIMG_RELIABILITY=long runs the long
form recorded in RELIABILITY.md (`OLLIMG_RELIABILITY=long ./scripts/test tests/reliability`).
Each test adds its figures to `figures`; with OLLIMG_RELIABILITY_REPORT=FILE they are written there
as JSON lines (what RELIABILITY.md quotes).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.registry_server import BINARY, RegistryServer

LONG = os.environ.get("OLLIMG_RELIABILITY", "").lower() == "long"


def trials(short: int, long: int) -> int:
    return long if LONG else short


@pytest.fixture
def figures(request):
    """A dict the test fills with its figures; printed, and written to OLLIMG_RELIABILITY_REPORT."""
    found: dict = {}
    yield found
    line = {"test": request.node.name, "mode": "long" if LONG else "short", **found}
    print(json.dumps(line))
    report = os.environ.get("OLLIMG_RELIABILITY_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps(line) + "\n")


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    if not shutil.which(BINARY):
        pytest.fail(f"{BINARY} is needed: apt-get install docker-registry (see scripts/system-deps)")
    server = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    yield server
    server.remove()
