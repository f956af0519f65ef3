"""The AUTOMATIC1111 subset (/sdapi/v1) with a fake runtime: shapes that Open WebUI and LibreChat read."""

from __future__ import annotations

import asyncio
import base64
import json

from tests.unit.asgi import call


def test_txt2img(tmp_path):
    async def fn(c, _):
        return await c.post("/sdapi/v1/txt2img", json={
            "prompt": "a cat", "negative_prompt": "blur", "seed": 7, "steps": 3, "cfg_scale": 2.5,
            "width": 250, "height": 100, "batch_size": 2, "n_iter": 1, "sampler_index": "DPM++ 2M",
        })

    r = call(tmp_path, fn)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [base64.b64decode(i) for i in body["images"]] == [b"png:tiny:latest:7", b"png:tiny:latest:8"]
    info = json.loads(body["info"])
    assert (info["width"], info["height"], info["seed"], info["all_seeds"]) == (256, 96, 7, [7, 8])
    assert info["steps"] == 3 and info["cfg_scale"] == 2.5 and info["sd_model_name"] == "tiny:latest"
    assert info["infotexts"][1].startswith("a cat\nNegative prompt: blur\nSteps: 3")
    assert body["parameters"]["prompt"] == "a cat"


def test_options_choose_the_model(tmp_path):
    async def fn(c, _):
        unset = await c.post("/sdapi/v1/txt2img", json={"prompt": "x"})
        models = (await c.get("/sdapi/v1/sd-models")).json()
        await c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other"})
        options = (await c.get("/sdapi/v1/options")).json()
        chosen = await c.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 1})
        override = await c.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 1, "override_settings": {"sd_model_checkpoint": "tiny"}})
        missing = await c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"})
        return unset, models, options, chosen, override, missing

    unset, models, options, chosen, override, missing = call(tmp_path, fn, models=("tiny", "other"))
    assert base64.b64decode(unset.json()["images"][0]).startswith(b"png:other:latest:")  # the newest model
    assert sorted(m["title"] for m in models) == ["other:latest", "tiny:latest"]
    assert options["sd_model_checkpoint"] == "other:latest"
    assert base64.b64decode(chosen.json()["images"][0]) == b"png:other:latest:1"
    assert base64.b64decode(override.json()["images"][0]) == b"png:tiny:latest:1"
    assert missing.status_code == 404


def test_progress_and_interrupt(tmp_path):
    async def fn(c, factory):
        job = asyncio.create_task(c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 100}))
        for _ in range(100):  # until a few steps have run
            await asyncio.sleep(0.05)
            during = (await c.get("/sdapi/v1/progress")).json()
            if during["state"]["sampling_step"] >= 2:
                break
        await c.post("/sdapi/v1/interrupt")
        r = await job
        after = (await c.get("/sdapi/v1/progress")).json()
        return during, r, after, factory.cancelled

    during, r, after, cancelled = call(tmp_path, fn, step_delay=0.02)
    assert during["state"]["job_count"] == 1 and 0 < during["progress"] < 1
    assert during["state"]["sampling_steps"] == 100
    assert r.status_code == 200 and cancelled == 1  # A1111 clients expect the txt2img to return normally
    assert r.json()["images"] == [] and json.loads(r.json()["info"])["interrupted"] is True
    assert after["state"]["job_count"] == 0 and after["progress"] == 0


def test_lists(tmp_path):
    async def fn(c, _):
        return [(await c.get(f"/sdapi/v1/{p}")).json() for p in ("samplers", "schedulers", "upscalers", "sd-vae")]

    samplers, schedulers, upscalers, vae = call(tmp_path, fn)
    assert samplers == [{"name": "Euler"}] and schedulers and upscalers and vae


def test_the_chosen_checkpoint_survives_a_restart(tmp_path):
    """Open WebUI sets the checkpoint once; after a server restart with two models it must still hold."""
    async def choose(c, _):
        return await c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"})

    async def after_restart(c, _):
        return (await c.get("/sdapi/v1/options")).json(), await c.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 3})

    assert call(tmp_path, choose, models=("tiny", "other")).status_code == 200
    options, r = call(tmp_path, after_restart, models=())  # a new app on the same store and data dir
    assert options["sd_model_checkpoint"] == "tiny:latest"
    assert base64.b64decode(r.json()["images"][0]) == b"png:tiny:latest:3"


def test_a_fresh_store_lists_the_builtin_model(tmp_path):
    """Before anything names it, the built-in model is what every listing shows and the default."""
    async def fn(c, _):
        return [(await c.get(p)).json() for p in ("/sdapi/v1/sd-models", "/sdapi/v1/options", "/api/tags", "/v1/models")]

    sd_models, options, tags, v1 = call(tmp_path, fn, models=())
    assert [m["title"] for m in sd_models] == ["shapes:latest"]
    assert options["sd_model_checkpoint"] == "shapes:latest"
    assert [m["name"] for m in tags["models"]] == ["shapes:latest"]
    assert [m["id"] for m in v1["data"]] == ["shapes:latest"]


def test_stock_a1111_settings_give_way_to_a_distilled_models_defaults(tmp_path):
    """webuiapi sends 20 steps, CFG 7, 512x512; Open WebUI 50 steps. On a distilled model (guidance 0)
    those become the model's defaults; other values, and every value on an undistilled model, stay."""
    from ollimg.manifest import Store
    from tests.unit.fake_runtime import make_model

    store = Store(tmp_path / "store")
    make_model(store, "turbo", {"steps": 4, "guidance": 0.0})
    make_model(store, "base", {"steps": 30, "guidance": 3.5})
    stock = {"prompt": "x", "steps": 20, "cfg_scale": 7, "width": 512, "height": 512}

    async def fn(c, _):
        out = []
        for body in (stock, {**stock, "steps": 50}, {**stock, "steps": 6, "cfg_scale": 1.5, "width": 256}):
            r = await c.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"sd_model_checkpoint": "turbo"}})
            out.append(json.loads(r.json()["info"]))
        r = await c.post("/sdapi/v1/txt2img", json={**stock, "override_settings": {"sd_model_checkpoint": "base"}})
        out.append(json.loads(r.json()["info"]))
        native = await c.post("/api/generate", json={"model": "turbo", "prompt": "x", "steps": 20, "guidance": 7,
                                                      "width": 512, "height": 512, "stream": False})
        v1 = await c.post("/v1/images/generations", json={"model": "turbo", "prompt": "x", "size": "512x512", "steps": 50})
        return out, native.json(), v1.json()

    (a, b, mixed, base), native, v1 = call(tmp_path, fn, models=())
    assert (a["steps"], a["cfg_scale"], a["width"], a["height"]) == (4, 0.0, 64, 64)  # the fake's defaults
    assert b["steps"] == 4
    assert (mixed["steps"], mixed["cfg_scale"], mixed["width"], mixed["height"]) == (6, 1.5, 256, 512)  # not the stock pair
    assert (base["steps"], base["cfg_scale"], base["width"]) == (20, 7.0, 512)
    assert (native["steps"], native["guidance"], native["width"]) == (4, 0.0, 64)
    assert v1["size"] == "64x64"


def test_which_models_count_as_distilled(tmp_path):
    import json as _json

    from ollimg.manifest import Manifest, Name, Store
    from ollimg.manifest.manifest import CONFIG_TYPE, Descriptor, file_layer
    from ollimg.server.defaults import distilled

    store = Store(tmp_path / "store")

    def model(defaults: dict, index: dict):
        cfg = _json.dumps({"defaults": defaults}).encode()
        data = _json.dumps(index).encode()
        manifest = Manifest(config=Descriptor(mediaType=CONFIG_TYPE, digest=store.blobs.put_bytes(cfg), size=len(cfg)),
                            layers=[file_layer("model_index.json", store.blobs.put_bytes(data), len(data))])
        return store.put_manifest(Name.parse(f"m{len(store.models())}"), manifest.dump())

    zimage = {"_class_name": "ZImagePipeline"}
    assert distilled(model({"steps": 8, "guidance": 0.0}, zimage))  # shapes
    assert distilled(model({}, zimage))  # Z-Image-Turbo straight from Hugging Face: the family's guidance 0
    assert not distilled(model({"guidance": 3.5}, zimage))
    assert not distilled(model({}, {"_class_name": "Flux2KleinPipeline", "is_distilled": False}))  # klein base
    assert distilled(model({}, {"_class_name": "Flux2KleinPipeline", "is_distilled": True}))
    assert not distilled(model({"distilled": False, "guidance": 0.0}, zimage))  # said outright
