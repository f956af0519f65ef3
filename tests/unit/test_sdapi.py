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
    assert unset.status_code == 400
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
    assert r.status_code == 499 and cancelled == 1
    assert after["state"]["job_count"] == 0 and after["progress"] == 0


def test_lists(tmp_path):
    async def fn(c, _):
        return [(await c.get(f"/sdapi/v1/{p}")).json() for p in ("samplers", "schedulers", "upscalers", "sd-vae")]

    samplers, schedulers, upscalers, vae = call(tmp_path, fn)
    assert samplers == [{"name": "Euler"}] and schedulers and upscalers and vae
