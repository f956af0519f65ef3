"""A real `ollimg serve` (real uvicorn, real runtime processes, the tiny fixture model) with an API key
and tight limits: every route needs the key, bodies are limited, over-limit requests are refused
before any work, ps shows what the runtime really holds, every request is in the access log,
concurrent clients that honour Retry-After get in, and schemathesis with every check finds no 5xx.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import CHECKS, load_all_checks

from tests.integration.test_server import Server
from tests.reliability.conftest import trials

KEY = "reliability-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {"OLLIMG_MAX_PIXELS": str(128 * 128), "OLLIMG_MAX_STEPS": "4", "OLLIMG_MAX_IMAGES": "2",
          "OLLIMG_MAX_BODY": "64KB", "OLLIMG_MAX_QUEUE": "1", "OLLIMG_MAX_GENERATION_TIME": "60s"}
SMALL = {"model": "tiny", "width": 64, "height": 64, "steps": 2, "stream": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_zimage_dir):
    srv = Server(tmp_path_factory.mktemp("live"), OLLIMG_API_KEY=KEY, **LIMITS)
    created = srv.cli("create", "tiny", "-f", str(tiny_zimage_dir))
    assert created.returncode == 0, created.stderr
    srv.env["OLLIMG_API_KEY"] = KEY  # Server drops it from its environment; this server needs it
    srv.start()
    yield srv
    srv.stop()


def test_every_route_needs_the_key(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        paths = c.get("/openapi.json", headers=AUTH).json()["paths"]
        refused = {}
        for path, operations in paths.items():
            for method in operations:
                r = c.request(method.upper(), path.replace("{", "").replace("}", ""), json={})
                refused[(method, path)] = r.status_code
        for extra in ("/openapi.json", "/docs", "/redoc"):
            refused[("get", extra)] = c.get(extra).status_code
        txt2img = c.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 1, "width": 32, "height": 32})
    open_routes = {k: v for k, v in refused.items() if v != 401}
    assert open_routes == {("get", "/"): 200}
    assert txt2img.status_code == 401


def test_a_body_over_the_limit_is_refused_while_it_streams(server):
    sent = 0

    def body():
        nonlocal sent
        for _ in range(100 * 1024):  # 100 MB if it were all read
            sent += 1024
            yield b" " * 1024

    started = time.monotonic()
    r = httpx.post(server.url + "/api/show", content=body(), headers={**AUTH, "Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    assert time.monotonic() - started < 30
    declared = httpx.post(server.url + "/api/show", content=b"{" + b" " * 70000 + b"}",
                          headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    assert declared.status_code == 413


def test_the_red_team_request_is_refused_before_any_work(server):
    for body in ({"width": 4096, "height": 4096, "n": 10, "steps": 200}, {"n": 10}, {"steps": 200}):
        r = httpx.post(server.url + "/api/generate", json={**SMALL, "prompt": "x", **body}, headers=AUTH, timeout=30)
        assert r.status_code == 400 and r.json()["code"] == "over_limit", r.text
    sd = httpx.post(server.url + "/sdapi/v1/txt2img", json={"prompt": "x", "width": 1024, "height": 1024},
                    headers=AUTH, timeout=30)
    assert sd.status_code == 400 and "OLLIMG_MAX_PIXELS" in sd.json()["error"]


def test_ps_shows_the_memory_the_runtime_holds(server):
    r = httpx.post(server.url + "/api/generate", json={**SMALL, "prompt": "a cat"}, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    [running] = httpx.get(server.url + "/api/ps", headers=AUTH).json()["models"]
    with open(f"/proc/{running['pid']}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    weights = httpx.post(server.url + "/api/show", json={"model": "tiny"}, headers=AUTH).json()["size"]
    assert running["size"] > 10 * weights  # a Python process with torch, not the weights' bytes
    assert abs(running["size"] - rss) < 0.2 * rss
    cli = server.cli("ps")
    assert cli.returncode == 0 and "tiny" in cli.stdout


def test_the_access_log_has_every_request(server):
    httpx.get(server.url + "/api/tags?secret=no", headers=AUTH)
    httpx.get(server.url + "/api/tags")
    text = server.log.read_text()
    assert '"GET /api/tags" 200' in text and '"GET /api/tags" 401' in text and "secret=no" not in text
    assert KEY not in text


@pytest.mark.timeout(trials(300, 1200))
def test_concurrent_clients_that_honour_retry_after_get_in(server, figures):
    """More clients than the queue takes: the refused ones wait what Retry-After says and retry."""
    clients = trials(4, 16)

    async def client(c: httpx.AsyncClient, i: int) -> tuple[int, list[int], float]:
        refusals, waits, started = 0, [], time.monotonic()
        while True:
            r = await c.post("/api/generate", json={**SMALL, "prompt": f"cat {i}", "seed": i}, headers=AUTH)
            if r.status_code != 503:
                assert r.status_code == 200, r.text
                return refusals, waits, time.monotonic() - started
            refusals += 1
            waits.append(int(r.headers["retry-after"]))
            await asyncio.sleep(waits[-1])

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
            return await asyncio.gather(*(client(c, i) for i in range(clients)))

    started = time.monotonic()
    results = asyncio.run(main())
    took = time.monotonic() - started
    advertised = [w for _, waits, _ in results for w in waits]
    figures.update(clients=clients, seconds=round(took, 1), refusals=sum(r for r, _, _ in results),
                   max_refusals_per_client=max(r for r, _, _ in results), retry_after_max=max(advertised, default=0),
                   retry_after_mean=round(sum(advertised) / len(advertised), 1) if advertised else 0)
    assert advertised, "the queue never overflowed: nothing was tested"
    assert max(advertised) <= max(5, took)  # never more than the whole run took
    assert max(r for r, _, _ in results) <= clients  # each refused client got in within a bounded number of tries


REQUIRED = {"not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
            "response_headers_conformance", "ignored_auth"}


def _failures(error: BaseException) -> list[str]:
    return [type(f).__name__ for f in getattr(error, "exceptions", None) or [error]]


@pytest.mark.timeout(trials(300, 3600))
def test_schemathesis_every_check_no_5xx(server, figures):
    """Every operation (but pull, push and delete: registries on the network, the one model) with
    every schemathesis check. No answer of 500 or more, and none of the REQUIRED checks fails; what
    the other checks (positive/negative data, methods, headers) find is counted in the figures."""
    load_all_checks()
    required = [c for c in CHECKS.get_all() if c.__name__ in REQUIRED]
    others = [c for c in CHECKS.get_all() if c.__name__ not in REQUIRED]
    assert len(required) == len(REQUIRED)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", headers=AUTH)
    schema = schema.exclude(path_regex=r"^/api/(pull|push|delete)$")
    examples = trials(8, 60)
    calls, server_errors, failures, other_failures = 0, [], [], {}
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.generate])
        def run(case):
            nonlocal calls
            response = case.call(headers=AUTH, timeout=120)
            calls += 1
            if response.status_code >= 500:
                server_errors.append(f"{operation.label}: {response.status_code} {response.text[:200]}")
            try:
                case.validate_response(response, checks=required, headers=AUTH)
            except BaseException as e:  # noqa: BLE001 (collected: every operation still runs)
                failures.append(f"{operation.label}: {_failures(e)} {str(e)[:400]}")
            try:
                case.validate_response(response, checks=others, headers=AUTH)
            except BaseException as e:  # noqa: BLE001
                for kind in _failures(e):
                    key = f"{kind} ({operation.label})"
                    other_failures[key] = other_failures.get(key, 0) + 1

        run()
    figures.update(operations=len(operations), calls=calls, server_errors=len(server_errors),
                   failed_required_checks=len(failures), other_check_findings=other_failures)
    assert not server_errors, server_errors
    assert not failures, "\n\n".join(failures)
