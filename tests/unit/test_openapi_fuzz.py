"""Schemathesis over the app's OpenAPI document (fake runtime, in-process): no 5xx, answers match the schema.

Bounded: a few dozen examples per operation. /api/pull and /api/push are left out because every
generated name would make the server call a registry over the network (their validation is the
same pydantic models, covered here through the other operations and in the registry tests).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.unit.asgi import fake_app

_tmp = Path(tempfile.mkdtemp(prefix="ollimg-fuzz-"))
app, _store, scheduler, _factory = fake_app(_tmp, models=("tiny", "other"), bind_host="0.0.0.0")
schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path_regex=r"^/api/(pull|push)$")

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@hypothesis.settings(
    max_examples=30, deadline=None, database=None, derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_api(case):
    case.call_and_validate(checks=CHECKS)


def test_openapi_lists_every_route():
    paths = set(app.openapi()["paths"])
    assert {
        "/", "/api/version", "/api/generate", "/api/tags", "/api/show", "/api/ps", "/api/create", "/api/pull",
        "/api/push", "/api/delete", "/api/copy", "/v1/models", "/v1/images/generations", "/sdapi/v1/txt2img",
        "/sdapi/v1/options", "/sdapi/v1/sd-models", "/sdapi/v1/progress", "/sdapi/v1/interrupt",
        "/api/save", "/api/load",
    } <= paths


@pytest.fixture(scope="module", autouse=True)
def _close_scheduler():
    yield
    asyncio.run(scheduler.close())
    shutil.rmtree(_tmp, ignore_errors=True)
