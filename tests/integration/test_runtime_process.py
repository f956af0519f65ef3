"""The runtime subprocess through RuntimeProcess: load, progress, previews, cancel, crash, parent death."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from ollimg.errors import Cancelled, InvalidInput, InvalidModel, RuntimeFailed
from ollimg.runtime.images import read_parameters
from ollimg.runtime.process import RuntimeProcess
from ollimg.runtime.request import GenerateRequest

from tests.conftest import cli_env


@pytest.fixture(scope="module")
def runtime(tiny_zimage_dir):
    rt = RuntimeProcess(str(tiny_zimage_dir), backend="torch", device="cpu")
    rt.start(timeout=120)
    yield rt
    rt.stop()


def test_generate_streams_steps_and_returns_images(runtime):
    steps, previews = [], []
    result = runtime.generate(GenerateRequest("a cat", width=48, height=32, steps=4, seed=5, n=2, previews=2,
                                              model_name="tiny:latest"),
                              on_step=steps.append, on_preview=previews.append)
    assert [s.step for s in steps] == [1, 2, 3, 4] and all(s.total == 4 for s in steps)
    assert [(p.index, p.image, p.step) for p in previews] == [(0, 0, 1), (0, 1, 1), (1, 0, 3), (1, 1, 3)]
    assert {Image.open(io.BytesIO(p.png)).size for p in previews} == {(48, 32)}
    assert previews[2].png != previews[3].png  # each image of the batch (seeds 5 and 6) has its own preview
    assert result.seeds == [5, 6] and len(result.images) == 2 and (result.width, result.height) == (48, 32)
    image = Image.open(io.BytesIO(result.images[1]))
    assert image.format == "PNG" and image.size == (48, 32)
    text = read_parameters(result.images[1])
    assert text.startswith("a cat\n") and "Seed: 6" in text and "Model: tiny," in text
    assert runtime.processor == "CPU" and runtime.memory > 0 and runtime.alive
    assert {"text_encode", "denoise", "decode", "encode"} <= set(result.timings)


def test_jpeg_output(runtime):
    result = runtime.generate(GenerateRequest("a cat", width=32, height=32, steps=1, seed=1, format="jpeg"))
    assert Image.open(io.BytesIO(result.images[0])).format == "JPEG"


def test_bad_request_is_a_typed_error_and_the_runtime_lives_on(runtime):
    with pytest.raises(InvalidInput, match="multiples of 16"):
        runtime.generate(GenerateRequest("a cat", width=1000, height=64))
    assert runtime.alive
    runtime.generate(GenerateRequest("a cat", width=16, height=16, steps=1))


def cancel_stops_a_running_generation(runtime) -> None:
    """Cancel at step 2 of 200 ends the request early with Cancelled; the next one runs normally.
    Shared with the MLX runtime's tests."""
    seen = []

    def on_step(step):
        seen.append(step.step)
        if step.step == 2:
            threading.Thread(target=runtime.cancel).start()

    with pytest.raises(Cancelled):
        runtime.generate(GenerateRequest("a cat", width=64, height=64, steps=200, seed=1), on_step=on_step)
    assert len(seen) < 50
    assert runtime.generate(GenerateRequest("a cat", width=16, height=16, steps=1)).seeds


def test_cancel_stops_a_running_generation(runtime):
    cancel_stops_a_running_generation(runtime)


def test_killed_worker_is_runtime_failed_with_stderr_tail(tiny_zimage_dir):
    rt = RuntimeProcess(str(tiny_zimage_dir), backend="torch", device="cpu")
    rt.start(timeout=120)

    def on_step(step):
        if step.step == 2:
            os.kill(rt.pid, signal.SIGKILL)

    with pytest.raises(RuntimeFailed) as info:
        rt.generate(GenerateRequest("a cat", width=64, height=64, steps=500), on_step=on_step)
    assert "exited" in info.value.message and "loaded" in info.value.stderr_tail
    assert not rt.alive
    with pytest.raises(RuntimeFailed):
        rt.generate(GenerateRequest("a cat", width=16, height=16, steps=1))


@pytest.mark.parametrize("backend", ["torch", pytest.param("mlx", marks=pytest.mark.mlx)])
def test_bad_weights_are_invalid_model_at_start(tiny_zimage_dir, tmp_path, backend):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "bad"
    shutil.copytree(tiny_zimage_dir, model)
    path = model / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    tensors["decoder.conv_out.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(tensors, path)
    if backend == "mlx":
        pytest.importorskip("mlx.core", reason="mlx is not installed: pip install 'mlx[cpu]' (Linux) or mlx (macOS)")
    rt = RuntimeProcess(str(model), backend=backend, device="cpu")
    with pytest.raises(InvalidModel, match="conv_out.weight has shape"):
        rt.start(timeout=120)
    assert not rt.alive


def test_unknown_model_fails_to_start(store_dir):
    rt = RuntimeProcess("nosuchmodel", backend="torch", device="cpu", models_dir=store_dir)
    with pytest.raises(Exception) as info:
        rt.start(timeout=60)
    assert info.value.code == "model_not_found"


PARENT = """
import json, sys, time
from ollimg.runtime.process import RuntimeProcess
rt = RuntimeProcess(sys.argv[1], backend="torch", device="cpu")
rt.start(timeout=120)
print(json.dumps({"pid": rt.pid}), flush=True)
time.sleep(600)
"""


def test_worker_exits_when_its_parent_dies(tiny_zimage_dir):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tiny_zimage_dir)], stdout=subprocess.PIPE,
                              env=cli_env())
    try:
        worker = json.loads(parent.stdout.readline())["pid"]
        os.kill(worker, 0)  # it is running
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the runtime outlived its parent by more than 5 s")
    finally:
        parent.kill()


def test_stop_ends_the_worker(tiny_zimage_dir):
    rt = RuntimeProcess(str(tiny_zimage_dir), backend="torch", device="cpu")
    rt.start(timeout=120)
    pid = rt.pid
    rt.stop()
    assert not rt.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- a worker spawned ahead of its model (the server's spare) ------------------------------------


def test_a_worker_spawned_ahead_prepares_then_loads_the_model_it_is_given(tiny_zimage_dir):
    rt = RuntimeProcess(backend="torch", device="cpu").spawn()
    try:
        assert rt.prepared.wait(120) and rt.alive  # its imports done, no model asked for yet
        assert "preparing the runtime failed" not in rt.stderr_tail()
        rt.model = str(tiny_zimage_dir)
        rt.start(timeout=120)
        result = rt.generate(GenerateRequest("a cat", width=16, height=16, steps=1, seed=1))
        assert len(result.images) == 1 and rt.processor == "CPU" and rt.memory > 0
    finally:
        rt.stop()


def test_a_spare_never_used_exits_when_stopped():
    rt = RuntimeProcess(backend="torch", device="cpu").spawn()
    pid = rt.pid
    rt.stop()
    assert not rt.alive and rt._proc.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_first_frame_that_names_no_model_is_one_error_frame():
    from ollimg.runtime.channel import Channel

    proc = subprocess.Popen([sys.executable, "-m", "ollimg.runtime", "--backend", "torch", "--device", "cpu"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=cli_env())
    channel = Channel(proc.stdout, proc.stdin)
    channel.send({"type": "generate", "request": {"prompt": "a cat"}})
    frames = []
    while (frame := channel.receive()) is not None:
        frames.append(frame)
    assert proc.wait(60) == 1
    errors = [f for f in frames if f["type"] == "error"]
    assert [f["type"] for f in frames if f["type"] != "prepared"] == ["error"]
    assert errors[0]["code"] == "runtime_failed" and "must name the model" in errors[0]["message"]


PREPARED = """
import json, sys
from ollimg.runtime import mlx_blas, prepare
prepare(sys.argv[1], "cpu", ahead=sys.argv[2] == "ahead")
torch_compile = sys.modules.get("ollimg.runtime.torch_compile")
if torch_compile is not None and torch_compile._preparing is not None:
    torch_compile._preparing.join()
print(json.dumps({"modules": sorted(sys.modules), "blas": mlx_blas._loaded, "wanted": mlx_blas.find()}))
"""


def _prepared(backend: str, compile_mode: str = "auto", ahead: bool = True) -> dict:
    run = subprocess.run([sys.executable, "-c", PREPARED, backend, "ahead" if ahead else "asked"],
                         env=cli_env(OLLIMG_COMPILE=compile_mode),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.parametrize("compile_mode", ["auto", "on"])
def test_prepare_imports_the_backend_and_every_family_build_and_the_compiler_only_where_it_compiles(compile_mode):
    modules = set(_prepared("torch", compile_mode)["modules"])
    assert {"torch", "ollimg.runtime.torch_backend", "ollimg.runtime.tokenizer", "ollimg.runtime.models.zimage.torch.build",
            "ollimg.runtime.models.flux2.torch.build"} <= modules
    assert not any(m.startswith("mlx") for m in modules)
    assert ("torch._inductor.compile_fx" in modules) == (compile_mode == "on")  # auto compiles on CUDA only


def test_prepare_for_a_model_already_asked_for_leaves_the_compiler_for_later():
    """A spare taken before it was prepared (a server asked at once): the compiler's imports would
    compete with the load and its first generation, which runs eagerly anyway."""
    modules = set(_prepared("torch", "on", ahead=False)["modules"])
    assert "ollimg.runtime.models.zimage.torch.build" in modules and "torch._inductor.compile_fx" not in modules


def test_prepare_for_mlx_loads_its_blas_before_mlx():
    pytest.importorskip("mlx.core", reason="mlx is not installed: pip install 'mlx[cpu]' (Linux) or mlx (macOS)")
    found = _prepared("mlx")
    assert {"mlx.core", "ollimg.runtime.models.zimage.mlx.build", "ollimg.runtime.models.flux2.mlx.build"} <= set(found["modules"])
    assert "torch" not in found["modules"]
    assert found["blas"] == found["wanted"]  # OpenBLAS where the system has it, loaded before mlx was imported
