"""Issue 13 item 8, the small holes, through a real `ollimg serve` (real uvicorn, real runtime
processes, the tiny fixture model) and the real CLI: the seed ceiling is one number everywhere,
booleans and NaN/Infinity are not numbers, a registry port is 1..65535, and a streamed create that
cannot start answers a 4xx before any line.
"""

from __future__ import annotations

import json
import resource
import subprocess

import httpx
import pytest

from ollimg.runtime.request import MAX_IMAGES, MAX_SEED
from tests.conftest import OLLIMG
from tests.integration.test_server import Server

SMALL = {"model": "tiny", "prompt": "a cat", "width": 32, "height": 32, "steps": 1, "stream": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_zimage_dir):
    srv = Server(tmp_path_factory.mktemp("edges"))
    created = srv.cli("create", "tiny", "-f", str(tiny_zimage_dir))
    assert created.returncode == 0, created.stderr
    srv.start()
    yield srv
    srv.stop()


def post(server: Server, path: str, body: dict | str) -> httpx.Response:
    """`body` as JSON, or as raw text (NaN and Infinity are not JSON, but Python's parser takes them)."""
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers={"Content-Type": "application/json"}, timeout=120)


def refused(r: httpx.Response, field: str) -> None:
    """A 400 that names the field: `param` (native, sdapi) or `error.param` (OpenAI), and the message."""
    assert r.status_code == 400, (r.status_code, r.text)
    error = r.json()["error"]
    param, message = (error["param"], error["message"]) if isinstance(error, dict) else (r.json().get("param"), error)
    assert param == field and field in message, r.text


# -- the seed ceiling ---------------------------------------------------------------------------


def test_the_seed_ceiling_is_one_number_on_every_interface(server):
    assert MAX_SEED == 2**53 - MAX_IMAGES  # image i uses seed + i: every image's seed is exact in any JSON reader
    schemas = httpx.get(server.url + "/openapi.json").json()["components"]["schemas"]
    advertised = {
        "native": schemas["GenerateRequest"]["properties"]["seed"],
        "openai": schemas["ImageGenerationRequest"]["properties"]["seed"],
        "sdapi": schemas["Txt2ImgRequest"]["properties"]["seed"],
    }
    for where, schema in advertised.items():
        maximum = next(s["maximum"] for s in [schema, *schema.get("anyOf", [])] if "maximum" in s)
        assert maximum == MAX_SEED, where

    # the ceiling itself generates (two images: seed and seed + 1) ...
    top = post(server, "/api/generate", {**SMALL, "seed": MAX_SEED, "n": 2})
    assert top.status_code == 200, top.text
    assert top.json()["seeds"] == [MAX_SEED, MAX_SEED + 1]
    sd = post(server, "/sdapi/v1/txt2img", {"prompt": "a cat", "seed": MAX_SEED, "steps": 1, "width": 32, "height": 32})
    assert sd.status_code == 200 and json.loads(sd.json()["info"])["seed"] == MAX_SEED, sd.text

    # ... and one above it is a 400 naming seed, before any work, on every interface
    for over in (MAX_SEED + 1, 2**53, 2**63 - 16, 2**63 - 1):
        refused(post(server, "/api/generate", {**SMALL, "seed": over}), "seed")
        refused(post(server, "/api/generate", {**SMALL, "options": {"seed": over}}), "seed")
        refused(post(server, "/v1/images/generations", {"model": "tiny", "prompt": "a cat", "size": "32x32", "seed": over}), "seed")
        refused(post(server, "/sdapi/v1/txt2img", {"prompt": "a cat", "seed": over, "steps": 1}), "seed")
    cli = server.cli("run", "tiny", "a cat", "--seed", str(MAX_SEED + 1), "--size", "32x32")
    assert cli.returncode == 2 and str(MAX_SEED) in cli.stderr and "Traceback" not in cli.stderr, cli.stderr


# -- booleans, NaN and Infinity are not numbers -------------------------------------------------


@pytest.mark.parametrize("path, field, extra", [
    ("/api/generate", "seed", SMALL),
    ("/api/generate", "guidance", SMALL),
    ("/api/generate", "keep_alive", SMALL),
    ("/api/generate", "steps", SMALL),
    ("/v1/images/generations", "seed", {"model": "tiny", "prompt": "a cat", "size": "32x32"}),
    ("/v1/images/generations", "guidance_scale", {"model": "tiny", "prompt": "a cat", "size": "32x32"}),
    ("/v1/images/generations", "keep_alive", {"model": "tiny", "prompt": "a cat", "size": "32x32"}),
    ("/sdapi/v1/txt2img", "seed", {"prompt": "a cat", "steps": 1, "width": 32, "height": 32}),
    ("/sdapi/v1/txt2img", "cfg_scale", {"prompt": "a cat", "steps": 1, "width": 32, "height": 32}),
])
@pytest.mark.parametrize("value", ["true", "false"])
def test_a_boolean_is_not_a_number(server, path, field, extra, value):
    body = json.dumps(extra)[:-1] + f', "{field}": {value}}}'
    refused(post(server, path, body), field)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_keep_alive_nan_and_infinity_are_refused(server, value):
    body = json.dumps(SMALL)[:-1] + f', "keep_alive": {value}}}'
    refused(post(server, "/api/generate", body), "keep_alive")
    oai = json.dumps({"model": "tiny", "prompt": "a cat", "size": "32x32"})[:-1] + f', "keep_alive": {value}}}'
    refused(post(server, "/v1/images/generations", oai), "keep_alive")
    for text in ("nan", "inf", "true"):
        refused(post(server, "/api/generate", {**SMALL, "keep_alive": text}), "keep_alive")
    assert httpx.get(server.url + "/api/ps").status_code == 200  # nothing odd was stored for ps to show


def test_the_cli_refuses_a_keep_alive_that_is_not_a_duration(server):
    cli = server.cli("run", "tiny", "a cat", "--size", "32x32", "--keep-alive", "nan")
    assert cli.returncode == 2, cli.stderr
    assert cli.stderr.strip().splitlines()[-1].startswith("Error: ") and "keep_alive" in cli.stderr


# -- ports --------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "0", "65536"])
def test_a_registry_port_outside_1_to_65535_is_refused(server, port):
    name = f"127.0.0.1:{port}/team/model:v1"
    r = post(server, "/api/pull", {"model": name})
    assert r.status_code == 400 and r.json()["code"] == "invalid_name" and port in r.json()["error"], r.text
    for args in (["pull", name], ["push", name], ["show", name]):
        cli = server.cli(*args)
        lines = cli.stderr.strip().splitlines()
        assert cli.returncode == 2 and len(lines) == 1 and "1 to 65535" in lines[0], (args, cli.stderr)


# -- a streamed create: a 4xx before streaming, an error line after ----------------------------


def test_a_create_that_cannot_start_is_a_4xx_before_any_line(server, tmp_path):
    for source in (str(tmp_path / "missing"), str(tmp_path)):
        r = post(server, "/api/create", {"model": "new", "from": source})
        assert r.status_code == 400 and r.headers["content-type"] == "application/json", (r.status_code, r.text)
        assert r.json()["code"] == "invalid_model"
        cli = server.cli("create", "new", "-f", source)
        assert cli.returncode == 2 and cli.stderr.strip().splitlines()[-1].startswith("Error: "), cli.stderr
    assert "new:latest" not in server.cli("list").stdout


def test_a_push_of_a_model_the_store_lacks_is_a_404_before_any_line(server):
    r = post(server, "/api/push", {"model": "127.0.0.1:5000/team/missing:v1"})
    assert r.status_code == 404 and r.json()["code"] == "model_not_found", (r.status_code, r.text)
    cli = server.cli("push", "127.0.0.1:5000/team/missing:v1")
    assert cli.returncode == 3 and cli.stderr.strip().splitlines() == [f"Error: {r.json()['error']}"], cli.stderr


def test_a_create_that_fails_once_streaming_is_an_error_line_and_a_failed_cli(tmp_path, tiny_zimage_dir):
    """A server whose files may not grow past 16 KiB (RLIMIT_FSIZE: EFBIG, the way a full disk
    answers): the source reads fine, so the stream starts, and the first large blob fails."""
    srv = Server(tmp_path)
    limit = 16 * 1024

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    srv.log = tmp_path / "serve.log"
    srv.proc = subprocess.Popen([*OLLIMG, "serve"], env=srv.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=small_files)
    try:
        _wait_up(srv)
        with httpx.stream("POST", srv.url + "/api/create", json={"model": "big", "from": str(tiny_zimage_dir)},
                          timeout=120) as r:
            assert r.status_code == 200
            lines = [json.loads(line) for line in r.iter_lines() if line.strip()]
        assert lines[0]["status"] != "success" and "error" not in lines[0]
        assert lines[-1]["code"] == "no_space" and "no space" in lines[-1]["error"], lines[-1]
        cli = srv.cli("create", "big", "-f", str(tiny_zimage_dir))
        assert cli.returncode != 0 and cli.stderr.strip().splitlines()[-1].startswith("Error: no space"), cli.stderr
        assert "big" not in srv.cli("list").stdout
    finally:
        srv.stop()


def _wait_up(srv: Server) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert srv.proc.poll() is None, "ollimg serve exited"
        try:
            if httpx.get(srv.url + "/", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("ollimg serve did not start")
