"""`ollimg create` and `ollimg pull` killed (SIGKILL) at random moments, then `ollimg verify`: the store
is never inconsistent (no manifest names a missing or wrong blob), and a later run completes.

A kill "landed mid-write" when the killed command had begun writing to the store (temp files,
partial downloads or blobs present) but had not written the manifest yet. Real CLI processes, the
real docker-registry; the seed is fixed so a failure can be replayed.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ollimg.manifest import Name, Store
from tests.conftest import OLLIMG, cli_env
from tests.reliability.conftest import trials
from tests.synthetic_model import make_big_model

MiB = 1 << 20


def _run(args: list[str], models: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*OLLIMG, *args], env=cli_env(OLLIMG_MODELS=str(models)), capture_output=True, text=True,
                          timeout=timeout)


def _started_writing(models: Path) -> bool:
    blobs = models / "blobs"
    try:
        return any(blobs.iterdir())
    except OSError:
        return False


def _killed(args: list[str], models: Path, delay: float, after_first_write: bool) -> bool:
    """Starts the command and SIGKILLs it `delay` seconds after it started (or, with
    `after_first_write`, after it first wrote to the store); True if it was still running then."""
    proc = subprocess.Popen([*OLLIMG, *args], env=cli_env(OLLIMG_MODELS=str(models)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while after_first_write and proc.poll() is None and not _started_writing(models):
        time.sleep(0.002)
    try:
        proc.wait(delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _moment(rng: random.Random, timing: tuple[float, float]) -> tuple[float, bool]:
    """Most kills at a random moment of the writing, some at a random moment of the whole run."""
    full, writing = timing
    return (rng.uniform(0.0, writing), True) if rng.random() < 0.8 else (rng.uniform(0.0, full), False)


def _writing(models: Path, name: str) -> bool:
    """The store shows a write under way: temp files or blobs, but no manifest for `name`."""
    store = Store(models)
    if store.exists(Name.parse(name)):
        return False
    return bool(store.blobs.temp_files() or store.blobs.digests())


def _consistent(models: Path) -> bool:
    return _run(["verify"], models).returncode == 0


def _timed(args: list[str], models: Path) -> tuple[float, float]:
    """(seconds of an uninterrupted run, seconds of it after its first write to the store)."""
    started = time.monotonic()
    proc = subprocess.Popen([*OLLIMG, *args], env=cli_env(OLLIMG_MODELS=str(models)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and not _started_writing(models):
        time.sleep(0.002)
    writing = time.monotonic()
    assert proc.wait(300) == 0, proc.stderr.read()
    ended = time.monotonic()
    return ended - started, ended - writing


@pytest.mark.timeout(trials(300, 3600))
def test_random_kills_of_create(tmp_path, figures):
    rng = random.Random(13)
    src = make_big_model(tmp_path / "src", tensors=32, tensor_bytes=4 * MiB)
    args = ["create", "big", "-f", str(src)]
    timing = _timed(args, tmp_path / "reference")
    n = trials(3, 50)
    killed = mid_write = inconsistent = 0
    for i in range(n):
        models = tmp_path / f"store-{i}"
        if _killed(args, models, *_moment(rng, timing)):
            killed += 1
            mid_write += _writing(models, "big")
        inconsistent += not _consistent(models)
        if i % 5 == 0:  # the next run over the leftovers completes and is whole
            assert _run(args, models).returncode == 0 and _consistent(models)
    figures.update(trials=n, seconds_uninterrupted=round(timing[0], 2), seconds_writing=round(timing[1], 2), killed=killed, mid_write=mid_write,
                   inconsistent=inconsistent)
    assert inconsistent == 0
    assert mid_write >= 1, "no kill landed while create was writing: the trials test nothing"


@pytest.mark.timeout(trials(300, 3600))
def test_random_kills_of_pull(tmp_path, registry, figures):
    rng = random.Random(31)
    name = f"{registry.host}/reliability/big:v1"
    src = make_big_model(tmp_path / "src", tensors=32, tensor_bytes=4 * MiB)
    source = tmp_path / "source-store"
    assert _run(["create", name, "-f", str(src)], source).returncode == 0
    pushed = _run(["push", name], source)
    assert pushed.returncode == 0, pushed.stderr
    timing = _timed(["pull", name], tmp_path / "reference")
    n = trials(3, 50)
    models = tmp_path / "store"  # one store: each pull resumes what the killed ones left
    killed = mid_write = inconsistent = completed = 0
    for i in range(n):
        if _killed(["pull", name], models, *_moment(rng, timing)):
            killed += 1
            mid_write += _writing(models, name)
        inconsistent += not _consistent(models)
        if i % 5 == 4 or i == n - 1:  # complete, then start over so later kills land mid-write again
            done = _run(["pull", name], models)
            assert done.returncode == 0 and _consistent(models), done.stderr
            manifests = sorted(str(p.relative_to(models)) for p in (models / "manifests").rglob("*"))
            assert Store(models).exists(Name.parse(name)), (i, done.stdout, done.stderr, manifests)
            assert Store(models).get(Name.parse(name)).raw == Store(source).get(Name.parse(name)).raw
            completed += 1
            assert _run(["rm", name], models).returncode == 0
    figures.update(trials=n, seconds_uninterrupted=round(timing[0], 2), seconds_writing=round(timing[1], 2), killed=killed, mid_write=mid_write,
                   inconsistent=inconsistent, completed_after_kills=completed)
    assert inconsistent == 0
    assert mid_write >= 1, "no kill landed while pull was writing: the trials test nothing"
