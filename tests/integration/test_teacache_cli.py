"""TeaCache through the real interfaces, for each family (the tiny Z-Image and FLUX.2 klein
fixtures): `ollimg calibrate` (a runtime process, the store), then a real `ollimg serve` with
`ollimg run --teacache`, the official openai client's extra_body, the A1111 override setting and
the native API; an uncalibrated model refuses with one clear line."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.integration.test_server import Server
from tests.integration.test_teacache_runtime import quick_klein

ARGS = ["--size", "32x32", "--steps", "6", "--seed", "1"]
MODELS = ["tiny", "klein"]  # Z-Image, FLUX.2 klein (distilled); each with a copy "<name>-plain" made before calibrating


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_zimage_dir, tiny_klein_dir):
    root = tmp_path_factory.mktemp("teacache")
    srv = Server(root)
    for args in (["create", "tiny", "-f", str(tiny_zimage_dir)], ["cp", "tiny", "tiny-plain"], ["cp", "tiny", "other"],
                 ["create", "klein", "-f", str(quick_klein(tiny_klein_dir, tmp_path_factory))],
                 ["cp", "klein", "klein-plain"]):
        done = srv.cli(*args)
        assert done.returncode == 0, done.stderr
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle\n\ntwo blue squares on a white background\n")
    srv.calibration, srv.before = {}, {}
    for model in MODELS:
        srv.before[model] = json.loads(srv.cli("show", model, "--json").stdout)
        done = srv.cli("calibrate", model, "--prompts", str(prompts), "--steps", "6", "--json", timeout=300)
        assert done.returncode == 0, done.stderr
        srv.calibration[model] = json.loads(done.stdout)
    srv.start()
    yield srv
    srv.stop()


def manifest(server, name):
    path = server.env["OLLIMG_MODELS"] + f"/manifests/registry.ollimg.dev/library/{name}/latest"
    return json.loads(open(path, "rb").read())


@pytest.mark.parametrize("model", MODELS)
def test_calibrate_stores_a_json_layer_in_a_new_manifest_sharing_every_blob(server, model):
    fit = server.calibration[model]
    assert fit["name"] == f"{model}:latest" and fit["prompts"] == 2 and fit["steps"] == 6 and fit["samples"] == 10
    assert len(fit["coefficients"]) == 5 and fit["fit_error"] >= 0 and set(fit["skipped"]) >= {"0.1", "0.3"}
    new, old = manifest(server, model), manifest(server, f"{model}-plain")  # the manifest before calibrating
    assert fit["digest"] != server.before[model]["digest"]
    added = [l for l in new["layers"] if l not in old["layers"]]
    assert [l["annotations"]["org.opencontainers.image.title"] for l in added] == ["teacache.json"]
    assert new["config"] == old["config"] and all(l in new["layers"] for l in old["layers"])
    blob = server.env["OLLIMG_MODELS"] + "/blobs/" + added[0]["digest"].replace(":", "-")
    assert json.loads(open(blob).read())["coefficients"] == fit["coefficients"]


def test_calibrate_prints_the_fit_and_a_threshold_table(server, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a green star\na red circle\n")
    done = server.cli("calibrate", "other", "--prompts", str(prompts), "--steps", "4", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "fit error" in done.stdout and "threshold  expected skipped steps" in done.stdout
    assert "ollimg run other:latest --teacache THRESHOLD" in done.stdout
    missing = server.cli("calibrate", "other", "--prompts", str(tmp_path / "nothing.txt"))
    assert missing.returncode == 2 and missing.stderr.startswith("Error: cannot read prompts")


def run(server, tmp_path, model, *extra):
    out = tmp_path / f"img{len(list(tmp_path.iterdir()))}.png"
    done = server.cli("run", model, "a red circle", *ARGS, "--json", "-o", str(out), *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), Image.open(out)


@pytest.mark.parametrize("model", MODELS)
def test_run_teacache_reports_the_reused_steps(server, tmp_path, model):
    plain, plain_image = run(server, tmp_path, model)
    zero, zero_image = run(server, tmp_path, model, "--teacache", "0")
    big, big_image = run(server, tmp_path, model, "--teacache", "100")
    assert "steps_reused" not in plain["timings"] and "TeaCache" not in plain_image.info["parameters"]
    assert (zero["timings"]["steps_run"], zero["timings"]["steps_reused"]) == (6, 0)
    assert np.array_equal(np.asarray(zero_image), np.asarray(plain_image))
    assert (big["timings"]["steps_run"], big["timings"]["steps_reused"]) == (2, 4)
    assert "TeaCache: 100.0, TeaCache steps: \"2 run, 4 reused\"" in big_image.info["parameters"]
    assert not np.array_equal(np.asarray(big_image), np.asarray(plain_image))


@pytest.mark.parametrize("model", MODELS)
def test_openai_extra_body_and_a1111_override(server, model):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    result = client.images.generate(model=model, prompt="a red circle", size="32x32",
                                    extra_body={"teacache": 100, "steps": 6, "seed": 1})
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert "TeaCache steps: \"2 run, 4 reused\"" in image.info["parameters"]
    r = httpx.post(server.url + "/sdapi/v1/txt2img", json={
        "prompt": "a red circle", "seed": 1, "steps": 6, "width": 32, "height": 32, "cfg_scale": 0,
        "override_settings": {"sd_model_checkpoint": model, "teacache": 100}}, timeout=120)
    assert r.status_code == 200, r.text
    png = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert "TeaCache: 100.0" in png.info["parameters"]
    lines = [json.loads(line) for line in httpx.post(server.url + "/api/generate", json={
        "model": model, "prompt": "a red circle", "width": 32, "height": 32, "steps": 6, "seed": 1, "teacache": 100},
        timeout=120).text.splitlines()]
    assert lines[-1]["done"] and lines[-1]["timings"]["steps_reused"] == 4
    native = Image.open(io.BytesIO(base64.b64decode(lines[-1]["images"][0])))
    assert np.array_equal(np.asarray(native.convert("RGB")), np.asarray(image.convert("RGB")))  # same request


def test_an_uncalibrated_model_refuses_caching_on_every_interface(server):
    done = server.cli("run", "tiny-plain", "a red circle", *ARGS, "--teacache", "0.3")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == ("Error: model tiny-plain:latest has no TeaCache calibration; "
                         "run: ollimg calibrate tiny-plain:latest")
    message = "no TeaCache calibration; run: ollimg calibrate tiny-plain:latest"
    for path, body in (("/api/generate", {"model": "tiny-plain", "prompt": "x", "teacache": 0.3}),
                       ("/v1/images/generations", {"model": "tiny-plain", "prompt": "x", "teacache": 0.3}),
                       ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "tiny-plain",
                                                                                   "teacache": 0.3}})):
        r = httpx.post(server.url + path, json=body, timeout=60)
        assert r.status_code == 400 and message in r.text, (path, r.text)
    for path, body in (("/api/generate", {"model": "tiny", "prompt": "x", "teacache": -1}),
                       ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "tiny",
                                                                                   "teacache": "lots"}})):
        assert httpx.post(server.url + path, json=body, timeout=60).status_code == 400, path
