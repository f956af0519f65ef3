"""A runtime's step-0 status (the first run of a compiled graph: "optimizing for this device,
once") reaches every interface: native progress lines, OpenAI progress events, /sdapi/v1/progress
and the CLI. The runtime side (the pipeline reporting it) is tested in test_zimage_fast_paths.py
and, on a GPU, tests/parity/test_cuda_parity.py."""

from __future__ import annotations

import asyncio
import json

from rich.console import Console

from ollimg.cli.run import _StepBar
from ollimg.progress import Step
from ollimg.runtime import torch_compile
from tests.unit.asgi import call


def with_status(factory, delay=0.0):
    factory.status, factory.status_delay = torch_compile.NOTICE, delay


def test_native_stream_says_it_before_the_first_step(tmp_path):
    async def fn(c, factory):
        with_status(factory)
        r = await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "steps": 2})
        return [json.loads(line) for line in r.text.splitlines()]

    lines = call(tmp_path, fn)
    assert lines[0]["step"] == 0 and lines[0]["status"] == torch_compile.NOTICE
    assert [line["step"] for line in lines[1:3]] == [1, 2] and "status" not in lines[1]


def test_openai_progress_events_carry_it(tmp_path):
    async def fn(c, factory):
        with_status(factory)
        r = await c.post("/v1/images/generations", json={"model": "tiny", "prompt": "x", "stream": True,
                                                         "progress": True, "steps": 2})
        return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]

    events = call(tmp_path, fn)
    progress = [e for e in events if e["type"] == "progress"]
    assert progress[0] == {"type": "progress", "step": 0, "total": 2, "status": torch_compile.NOTICE}
    assert "status" not in progress[1]


def test_sdapi_progress_shows_it_as_textinfo_while_it_lasts(tmp_path):
    async def fn(c, factory):
        with_status(factory, delay=1.0)
        job = asyncio.create_task(c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2}))
        during = None
        for _ in range(100):
            await asyncio.sleep(0.02)
            during = (await c.get("/sdapi/v1/progress")).json()
            if during["textinfo"]:
                break
        await job
        after = (await c.get("/sdapi/v1/progress")).json()
        return during, after

    during, after = call(tmp_path, fn)
    assert during["textinfo"] == torch_compile.NOTICE and during["state"]["sampling_step"] == 0
    assert after["textinfo"] is None


def test_cli_prints_it_once():
    console = Console(record=True, force_terminal=False, width=120)
    with _StepBar(console) as bar:
        bar(Step(0, 2, 0.0, torch_compile.NOTICE))
        bar(Step(1, 2, 0.5))
        bar(Step(2, 2, 1.0))
    text = console.export_text()
    assert text.count(torch_compile.NOTICE) == 1 and "step 1/2" in text and "step 2/2" in text
