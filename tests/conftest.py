import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items):
    """Tests marked slow run first (otherwise in file order): with two workers (pytest-xdist,
    `./scripts/test`) a minute-long test then overlaps the short ones instead of ending the run
    alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def store_dir(tmp_path, monkeypatch):
    """Every test gets its own empty store; nothing touches the user's data dir."""
    models = tmp_path / "models"
    monkeypatch.setenv("OLLIMG_MODELS", str(models))
    monkeypatch.setenv("OLLIMG_REGISTRY", "registry.ollimg.dev")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("OLLIMG_HOST", "127.0.0.1:9")  # no server: CLI commands work locally unless a test starts one
    return models


def cli_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


OLLIMG = [sys.executable, "-m", "ollimg"]


@pytest.fixture(scope="session")
def tiny_zimage_dir(tmp_path_factory) -> Path:
    """A tiny random Z-Image model (fp32) in the diffusers layout, built once per test session."""
    sys.path.insert(0, str(ROOT / "fixtures"))
    from make_tiny_zimage import make_tiny_zimage

    return make_tiny_zimage(tmp_path_factory.mktemp("tiny-zimage") / "model", dtype="float32", seed=0)


@pytest.fixture(scope="session")
def tiny_klein_dir(tmp_path_factory) -> Path:
    """A tiny random FLUX.2 klein model (distilled, fp32) in the diffusers layout, built once per session."""
    sys.path.insert(0, str(ROOT / "fixtures"))
    from make_tiny_klein import make_tiny_klein

    return make_tiny_klein(tmp_path_factory.mktemp("tiny-klein") / "model", distilled=True, seed=0)


@pytest.fixture(scope="session")
def tiny_klein_base_dir(tmp_path_factory) -> Path:
    """The undistilled ("base") variant of `tiny_klein_dir`: same weights, is_distilled false (CFG)."""
    sys.path.insert(0, str(ROOT / "fixtures"))
    from make_tiny_klein import make_tiny_klein

    return make_tiny_klein(tmp_path_factory.mktemp("tiny-klein-base") / "model", distilled=False, seed=0)
