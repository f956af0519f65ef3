"""FLUX.2 klein through the real CLI and `ollimg serve` (real runtime processes): `create` in bf16
and with `--quantize fp8`, `show`, `run`, the native, OpenAI and A1111 APIs, the variants'
recommended defaults, PNG metadata; and the store deduplicating a text encoder that a klein and a
Z-Image model share.
"""

from __future__ import annotations

import base64
import io
import json
import shutil

import httpx
import openai
import pytest
from PIL import Image

from tests.integration.test_server import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_klein_dir, tiny_klein_base_dir):
    root = tmp_path_factory.mktemp("serve-klein")
    srv = Server(root, OLLIMG_KEEP_ALIVE="5m")
    for name, path, extra in [("klein", tiny_klein_dir, ["--dtype", "bf16"]),
                              ("klein:fp8", tiny_klein_dir, ["--quantize", "fp8", "--dtype", "bf16"]),
                              ("klein-base", tiny_klein_base_dir, [])]:
        created = srv.cli("create", name, "-f", str(path), *extra)
        assert created.returncode == 0, created.stderr
    srv.start()
    yield srv
    srv.stop()


def png(data: bytes | str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data) if isinstance(data, str) else data))


def test_show_names_the_architecture_and_the_fp8_quantization(server):
    shown = json.loads(server.cli("show", "klein:fp8", "--json").stdout)
    assert shown["architecture"] == "Flux2KleinPipeline"
    assert shown["components"]["transformer"]["class_name"] == "Flux2Transformer2DModel"
    assert "F8_E4M3" in shown["components"]["transformer"]["dtypes"]
    assert "F8_E4M3" in shown["components"]["text_encoder"]["dtypes"]
    assert "F8_E4M3" not in shown["components"]["vae"]["dtypes"]
    assert shown["quantization"]["tensors"] > 0 and 0 < shown["quantization"]["rel_rms_error"] < 0.05
    text = server.cli("show", "klein").stdout
    assert "Flux2KleinPipeline" in text and "parameters" in text


@pytest.mark.parametrize("model", ["klein", "klein:fp8"])
def test_cli_run_uses_the_distilled_defaults(server, tmp_path, model):
    out = tmp_path / "fox.png"
    r = server.cli("run", model, "a red fox", "--size", "48x32", "--seed", "3", "-o", str(out))
    assert r.returncode == 0, r.stderr
    image = Image.open(out)
    assert image.size == (48, 32)
    parameters = image.text["parameters"]
    assert parameters.startswith("a red fox\n") and "Steps: 4," in parameters and "Seed: 3," in parameters
    assert f'Model: "{model if ":" in model else model + ":latest"}"' in parameters


def test_the_base_model_runs_cfg_with_its_default_guidance_4(server, tmp_path):
    """(Its default of 50 steps is checked in tests/parity/test_klein_torch_parity.py: 50 steps of
    CFG take minutes on a shared CPU.)"""
    out = tmp_path / "base.png"
    r = server.cli("run", "klein-base", "a lighthouse", "--size", "32x32", "--steps", "2", "--seed", "5",
                   "--negative", "blurry", "-o", str(out))
    assert r.returncode == 0, r.stderr
    parameters = Image.open(out).text["parameters"]
    assert "Negative prompt: blurry" in parameters
    assert "Steps: 2," in parameters and "CFG scale: 4.0," in parameters


def test_same_request_same_image_through_every_api(server):
    """The native API, the OpenAI client and A1111 give the same pixels for the same settings."""
    body = {"model": "klein", "prompt": "a cat", "width": 32, "height": 48, "steps": 2, "seed": 9, "stream": False}
    r = httpx.post(server.url + "/api/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    native = png(r.json()["images"][0])
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="anything", max_retries=0)
    result = oai.images.generate(model="klein", prompt="a cat", size="32x48", n=1,
                                 extra_body={"steps": 2, "seed": 9})
    via_openai = png(result.data[0].b64_json)
    r = httpx.post(server.url + "/sdapi/v1/txt2img", json={
        "prompt": "a cat", "seed": 9, "steps": 2, "width": 32, "height": 48, "override_settings":
        {"sd_model_checkpoint": "klein"}}, timeout=120)
    assert r.status_code == 200, r.text
    via_a1111 = png(r.json()["images"][0])
    assert native.size == via_openai.size == via_a1111.size == (32, 48)
    assert native.tobytes() == via_openai.tobytes() == via_a1111.tobytes()


def test_bad_size_is_a_400_with_one_message(server):
    r = httpx.post(server.url + "/api/generate", json={"model": "klein", "prompt": "x", "width": 40, "height": 32},
                   timeout=30)
    assert r.status_code == 400 and "multiple of 16" in r.json()["error"]


def test_a_shared_text_encoder_is_stored_once(tiny_klein_dir, tiny_zimage_dir, tmp_path):
    """klein 4B and Z-Image share Qwen3-4B: a Z-Image model carrying the klein fixture's text
    encoder (and tokenizer) adds no text-encoder blob to a store that holds the klein model."""
    from ollimg.create import create
    from ollimg.manifest import Store
    from ollimg.runtime import load

    zimage = tmp_path / "zimage-shared-te"
    shutil.copytree(tiny_zimage_dir, zimage)
    for part in ("text_encoder", "tokenizer"):
        shutil.rmtree(zimage / part)
        shutil.copytree(tiny_klein_dir / part, zimage / part)
    store_dir = tmp_path / "store"
    store = Store(store_dir)
    blobs = lambda: {p.name for p in (store_dir / "blobs").iterdir()}  # noqa: E731

    klein = create(store, "klein", tiny_klein_dir)
    after_klein = blobs()
    z = create(store, "zimage", zimage)
    added = blobs() - after_klein

    def digests(model, prefix):
        return {ref.path.name for ref in model.tensors(prefix).values()}

    te = digests(z, "text_encoder/")
    assert len(te) > 10 and te == digests(klein, "text_encoder/")
    assert te.isdisjoint(added)  # not one text-encoder tensor was written again
    assert digests(z, "transformer/") <= added  # while Z-Image's own weights were
    te_bytes = sum(ref.nbytes for ref in z.tensors("text_encoder/").values())
    assert z.deduplicated_bytes >= te_bytes
    # both still load and run from the shared blobs
    for name in ("klein", "zimage"):
        pipe = load(name, backend="torch", device="cpu", models_dir=store_dir)
        assert pipe.generate("a cat", width=32, height=32, steps=1, seed=1, max_sequence_length=16).images
