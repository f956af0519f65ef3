"""The clients people already run, unchanged, against a real `ollimg serve` on a fresh store.

The `ollama` Python client, `webuiapi` (AUTOMATIC1111), `litellm`, the `openai` SDK, curl as
ollama's docs use it, and `sd-parsers` reading the images' metadata. The model is the built-in
`shapes` (128x128, 8 steps): a fresh store lists it before anything names it.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess

import httpx
import pytest
from PIL import Image

from tests.integration.test_server import Server

import ollama  # noqa: E402  (test dependencies: missing, the tests fail rather than skip)
import openai  # noqa: E402
import sd_parsers  # noqa: E402
import webuiapi  # noqa: E402

PROMPT = "a large red circle at the top left on a blue background"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("clients")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def litellm():
    import litellm  # slow to import (seconds): once for the module

    return litellm


@pytest.fixture
def oll(server):
    return ollama.Client(host=server.url)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


# -- the ollama Python client -------------------------------------------------------------------


def test_ollama_list_show_generate_ps(oll):
    assert "shapes:latest" in [m.model for m in oll.list().models]  # listed on a fresh store
    shown = oll.show("shapes")
    assert "steps 8" in shown.parameters.splitlines() and shown.capabilities == ["image"]

    whole = oll.generate("shapes", PROMPT, options={"seed": 42}, width=64, height=96)
    assert decode(whole.image).size == (64, 96) and whole.done
    parts = list(oll.generate("shapes", PROMPT, stream=True, options={"seed": 42}, width=64, height=96))
    steps = [(p.completed, p.total) for p in parts if not p.done]
    assert steps == [(i, 8) for i in range(1, 9)]
    assert parts[-1].image == whole.image  # the seed was used: same image
    assert [m.model for m in oll.ps().models] == ["shapes:latest"]


def test_ollama_pull_from_a_loopback_registry_and_delete(server, oll, registry):
    """The client always sends `insecure: false`; for a loopback registry that means plain HTTP."""
    name = f"{registry.host}/clients/shapes:v1"
    assert server.cli("cp", "shapes", name).returncode == 0
    pushed = server.cli("push", name)
    assert pushed.returncode == 0, pushed.stderr
    oll.delete(name)
    assert name not in [m.model for m in oll.list().models]

    progress = list(oll.pull(name, stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    sized = [p for p in progress if p.total]  # the blobs are shapes:latest's, so they are "skipping"
    assert sized and all(p.digest and p.completed == p.total for p in sized)
    assert name in [m.model for m in oll.list().models]
    oll.delete(name)
    assert name not in [m.model for m in oll.list().models]
    with pytest.raises(ollama.ResponseError, match="not found"):
        oll.delete(name)


def test_curl_as_in_ollamas_docs(server):
    """`curl .../api/generate -d '{...}'` sends form-encoded JSON; it is read as JSON."""
    body = json.dumps({"model": "shapes", "prompt": PROMPT, "stream": False, "seed": 1})
    r = subprocess.run(["curl", "-sS", f"{server.url}/api/generate", "-d", body], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert decode(json.loads(r.stdout)["image"]).size == (128, 128)


# -- AUTOMATIC1111 clients ----------------------------------------------------------------------


def test_webuiapi_with_its_own_defaults(server):
    """webuiapi sends 512x512, CFG 7, 20 steps: on a distilled model the model's defaults are used."""
    api = webuiapi.WebUIApi(baseurl=server.url + "/sdapi/v1")
    assert "shapes:latest" in [m["title"] for m in api.get_sd_models()]
    result = api.txt2img(prompt=PROMPT, seed=5)
    assert result.image.size == (128, 128)
    assert (result.info["steps"], result.info["cfg_scale"], result.info["seed"]) == (8, 0.0, 5)
    assert "Model: shapes," in result.info["infotexts"][0]


def test_webuiapi_interrupt_returns_the_running_txt2img(server):
    import threading

    api = webuiapi.WebUIApi(baseurl=server.url + "/sdapi/v1")
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", api.txt2img(prompt=PROMPT, steps=100, width=512, height=512)))
    thread.start()
    for _ in range(600):
        if api.get_progress()["state"]["sampling_step"] >= 1:
            break
        thread.join(0.05)
    api.interrupt()
    thread.join(60)
    assert not thread.is_alive() and out["r"].images == [] and out["r"].info["interrupted"] is True


# -- OpenAI clients -----------------------------------------------------------------------------


def test_litellm_image_generation_n2(server, litellm):
    result = litellm.image_generation(model="openai/shapes", prompt=PROMPT, n=2, api_base=server.url + "/v1",
                                      api_key="unused", size="128x128")
    images = [decode(d.b64_json) for d in result.data]
    assert [i.size for i in images] == [(128, 128), (128, 128)]
    assert images[0].tobytes() != images[1].tobytes()


def test_openai_sdk_retrieve_default_model_and_stream(server):
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert oai.models.retrieve("shapes").id == "shapes:latest"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nothing-here")
    made = oai.images.generate(model="dall-e-2", prompt=PROMPT, size="100x100")  # Open WebUI's fallback name
    assert made.size == "96x96" and decode(made.data[0].b64_json).size == (96, 96)
    events = list(oai.images.generate(model="shapes", prompt=PROMPT, stream=True, partial_images=1))
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    assert all(e.b64_json for e in events)  # no empty partial images from step events


# -- metadata readers ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_sd_parsers_read_the_metadata(server, fmt):
    r = httpx.post(server.url + "/api/generate", timeout=120, json={
        "model": "shapes", "prompt": PROMPT, "negative_prompt": "blurry", "seed": 77, "format": fmt, "stream": False})
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["image"])))
    info = sd_parsers.ParserManager().parse(image)
    assert info is not None and info.generator == sd_parsers.data.Generators.AUTOMATIC1111
    [sampler] = info.samplers
    assert [p.value for p in sampler.prompts] == [PROMPT] and [p.value for p in sampler.negative_prompts] == ["blurry"]
    assert sampler.parameters["seed"] == "77" and sampler.parameters["steps"] == "8"
    assert sampler.model.name == "shapes" and len(sampler.model.hash) == 10


# -- ollama's CLI habits through the server -----------------------------------------------------


def test_cli_run_verbose_keepalive_and_format_json(server, tmp_path):
    r = server.cli("run", "shapes", PROMPT, "--verbose", "--keepalive", "1m", "--format", "json", "--seed", "3",
                   "-o", str(tmp_path / "a.png"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["images"] == [{"path": str(tmp_path / "a.png"), "seed": 3}] and out["format"] == "png"
    assert "total duration:" in r.stderr and "denoise duration:" in r.stderr


def test_cli_typo_of_a_stored_model(server):
    r = server.cli("run", "shaeps", PROMPT)
    assert r.returncode == 3 and 'did you mean "shapes:latest"?' in r.stderr, r.stderr
    r = server.cli("rm", "nosuch")
    assert r.returncode == 3 and r.stderr.strip() == 'Error: model "nosuch:latest" not found'


def test_ollama_pull_of_the_builtin_name(oll):
    progress = list(oll.pull("shapes", stream=True))
    assert "built in" in progress[0].status and progress[-1].status == "success"


# -- frontends whose requests are replayed (the apps themselves are not run here) ---------------


def test_librechat_request_shapes(server):
    """LibreChat's OpenAI image tool (no response_format, size/quality auto) and its SD tool."""
    r = httpx.post(server.url + "/v1/images/generations", headers={"Authorization": "Bearer anything"}, timeout=120, json={
        "model": "shapes", "prompt": PROMPT, "n": 1, "background": "auto", "output_format": "png", "quality": "auto",
        "size": "auto"})
    assert r.status_code == 200, r.text
    assert decode(r.json()["data"][0]["b64_json"]).size == (128, 128)
    r = httpx.post(server.url + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": PROMPT, "negative_prompt": "blurry", "sampler_index": "DPM++ 2M Karras", "cfg_scale": 4.5,
        "steps": 6, "width": 128, "height": 128})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert decode(r.json()["images"][0]).size == (128, 128)
    assert (info["width"], info["height"], info["steps"]) == (128, 128, 6) and info["seed"] and info["infotexts"]


def test_sillytavern_call_sequence(server):
    """What SillyTavern's Stable Diffusion extension calls, in order."""
    get = lambda path: httpx.get(server.url + "/sdapi/v1/" + path, timeout=30)  # noqa: E731
    assert get("options").json()["sd_model_checkpoint"]
    assert "shapes:latest" in [m["title"] for m in get("sd-models").json()]
    for path in ("samplers", "schedulers", "upscalers", "latent-upscale-modes", "sd-vae"):
        r = get(path)
        assert r.status_code == 200 and isinstance(r.json(), list), path
    r = httpx.post(server.url + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": PROMPT, "negative_prompt": "", "sampler_name": "Euler", "scheduler": "Simple", "steps": 20,
        "cfg_scale": 7, "width": 512, "height": 512, "seed": -1, "restore_faces": False, "enable_hr": False})
    assert r.status_code == 200 and decode(r.json()["images"][0]).size == (128, 128)
    progress = get("progress").json()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
