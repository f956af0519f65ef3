"""The README's main job, end to end: `ollimg run shapes "..."` on an empty store.

A real `ollimg serve` imports the packaged `shapes` model on first use (through the same
`create` as any model), a real runtime process generates, and the automatic checker of
training/shapes/ scores the image against the prompt.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.integration.test_server import Server
from training.shapes.check import score
from training.shapes.world import Shape, Spec

PROMPT = "a large red circle at the top left on a blue background"


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path).start()
    yield srv
    srv.stop()


def test_run_imports_the_builtin_model_and_follows_the_prompt(server, tmp_path):
    assert "shapes:latest" in server.cli("list").stdout  # a fresh store lists the built-in model
    out = tmp_path / "out.png"
    result = server.cli("run", "shapes", PROMPT, "-o", str(out), "--seed", "7", timeout=300)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and "7" in result.stdout
    image = Image.open(out)
    assert image.size == (128, 128)  # the model's own default size, from its ollimg.json
    assert PROMPT in image.text["parameters"]
    spec = Spec("blue", [Shape("circle", "red", "large", "top left", 22.0, 22.0)], PROMPT)
    s = score(np.asarray(image.convert("RGB")), spec)
    assert (s.background, s.color, s.position) == (True, True, True)
    listed = server.cli("list").stdout
    assert "shapes:latest" in listed
    shown = server.cli("show", "shapes")
    assert shown.returncode == 0 and "ZImagePipeline" in shown.stdout


def test_only_the_default_registry_name_is_builtin(server):
    result = server.cli("run", "other.example/library/shapes", "x", timeout=60)
    assert result.returncode == 3
    assert "not found" in result.stderr


def test_the_readme_script_writes_to_the_current_directory(server, tmp_path):
    """`./scripts/run "PROMPT"`, the README's main command, run from another directory."""
    import subprocess
    from pathlib import Path

    here = tmp_path / "elsewhere"
    here.mkdir()
    script = Path(__file__).resolve().parents[2] / "scripts" / "run"
    result = subprocess.run([str(script), PROMPT, "--seed", "3"], cwd=here, env=server.env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [image] = here.glob("a-large-red-circle-*.png")
    assert result.stdout.strip() == f"{image}  seed 3"
