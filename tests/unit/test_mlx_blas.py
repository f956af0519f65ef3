"""MLX on a Linux CPU gets the system's OpenBLAS (its wheel's reference BLAS is ~20x slower).

Each case runs in a fresh interpreter: the library must be loaded before mlx is first imported.
CI installs Debian's libopenblas0-pthread (.ci/run), so these run there.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from tests.conftest import cli_env

pytest.importorskip("mlx.core")
pytestmark = [pytest.mark.mlx, pytest.mark.skipif(platform.system() != "Linux", reason="Linux-only concern")]

PROBE = """
import json, sys
from ollimg.runtime import backend, mlx_blas
backend.create("mlx", device="cpu")
import numpy as np
import mlx.core as mx
a = np.random.default_rng(0).standard_normal((256, 300), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((300, 200), dtype=np.float32)
err = float(np.abs(np.array(mx.array(a) @ mx.array(b)) - a @ b).max())
# numpy bundles its own (symbol-prefixed) libscipy_openblas: look for the library we loaded
maps = open("/proc/self/maps").read()
wanted = mlx_blas.find()
loaded = mlx_blas._loaded
print(json.dumps({"openblas": bool(loaded) and "libopenblas" in maps, "err": err, "torch": "torch" in sys.modules}))
"""


def probe(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env=cli_env(**env), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_openblas_is_loaded_for_mlx_and_matmul_stays_right():
    result = probe(OLLIMG_MLX_BLAS="auto")
    assert result["openblas"], "libopenblas not mapped: install libopenblas0-pthread (Debian)"
    assert result["err"] < 1e-3


def test_bundled_keeps_the_wheels_blas():
    result = probe(OLLIMG_MLX_BLAS="bundled")
    assert not result["openblas"]
    assert result["err"] < 1e-3


def test_not_when_torch_is_loaded():
    result = probe_with_torch()
    assert not result["openblas"] and result["torch"]
    assert result["err"] < 1e-3


def probe_with_torch() -> dict:
    code = "import torch\n" + PROBE
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(OLLIMG_MLX_BLAS="auto"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_bad_path_is_one_clear_error():
    out = subprocess.run([sys.executable, "-c", PROBE], env=cli_env(OLLIMG_MLX_BLAS="/nonexistent/libblas.so"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "OLLIMG_MLX_BLAS" in out.stderr
