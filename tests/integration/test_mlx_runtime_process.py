"""The runtime subprocess on the MLX backend, through RuntimeProcess like the server uses it.

Skipped only when mlx cannot be imported (install `mlx[cpu]` on Linux, `mlx` on macOS).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mlx.core", reason="mlx is not installed: pip install 'mlx[cpu]' (Linux) or mlx (macOS)")

from ollimg.runtime.process import RuntimeProcess  # noqa: E402
from ollimg.runtime.request import GenerateRequest  # noqa: E402
from tests.integration.test_runtime_process import cancel_stops_a_running_generation  # noqa: E402

pytestmark = pytest.mark.mlx


@pytest.fixture(scope="module")
def runtime(tiny_zimage_dir):
    rt = RuntimeProcess(str(tiny_zimage_dir), backend="mlx", device="cpu")
    rt.start(timeout=120)
    yield rt
    rt.stop()


def test_mlx_runtime_generates_like_the_torch_runtime(runtime, tiny_zimage_dir):
    steps = []
    request = GenerateRequest("a cat", negative_prompt="blurry", width=48, height=32, steps=3, guidance=2.0,
                              seed=5, n=2, previews=1, model_name="tiny:latest")
    result = runtime.generate(request, on_step=steps.append)
    assert runtime.processor == "MLX" and runtime.memory > 0 and runtime.alive
    assert [s.step for s in steps] == [1, 2, 3] and result.seeds == [5, 6]
    images = [Image.open(io.BytesIO(png)) for png in result.images]
    assert all(im.format == "PNG" and im.size == (48, 32) for im in images)

    torch_rt = RuntimeProcess(str(tiny_zimage_dir), backend="torch", device="cpu")
    torch_rt.start(timeout=120)
    try:
        expected = torch_rt.generate(request)
    finally:
        torch_rt.stop()
    for ours, theirs in zip(result.images, expected.images):
        a = np.asarray(Image.open(io.BytesIO(ours))).astype(int)
        b = np.asarray(Image.open(io.BytesIO(theirs))).astype(int)
        assert np.abs(a - b).max() <= 1


def test_cancel_stops_a_running_mlx_generation(runtime):
    cancel_stops_a_running_generation(runtime)


def test_cli_serves_an_mlx_model_end_to_end(tiny_zimage_dir, tmp_path):
    """`ollimg serve` with OLLIMG_BACKEND=mlx: create, run and ps through the real CLI."""
    from tests.integration.test_server import Server

    server = Server(tmp_path)
    server.env["OLLIMG_BACKEND"] = "mlx"
    server.start()
    try:
        assert server.cli("create", "tiny", "-f", str(tiny_zimage_dir)).returncode == 0
        out = tmp_path / "fox.png"
        r = server.cli("run", "tiny", "a red fox", "--size", "48x32", "--steps", "2", "--seed", "3", "-o", str(out))
        assert r.returncode == 0, r.stderr
        assert Image.open(out).size == (48, 32)
        assert [m["processor"] for m in server.ps()] == ["MLX"]
    finally:
        server.stop()
