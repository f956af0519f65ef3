"""Regional compilation never makes a generation wait for the compiler's imports: the blocks run
eagerly until the import thread is done, then the next generation compiles them (never one
already running) and reports its first use of each graph. (The compiled results themselves: test_zimage_fast_paths.py, on the CPU, and
tests/parity/test_cuda_parity.py.)"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from torch import nn

from ollimg.runtime import load, torch_compile


@pytest.fixture
def gated_compiler(monkeypatch, tmp_path):
    """The compiler's import thread held until the test opens the gate."""
    gate = threading.Event()
    monkeypatch.setattr(torch_compile, "_preparing", None)
    monkeypatch.setattr(torch_compile, "_import_compiler", lambda: gate.wait(60))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    yield gate
    gate.set()
    if torch_compile._preparing is not None:
        torch_compile._preparing.join()


def test_blocks_stay_eager_until_the_compiler_is_imported(gated_compiler):
    blocks = [nn.Linear(2, 2), nn.Linear(2, 2)]
    regional = torch_compile.Regional(blocks, enabled=True)
    assert not torch_compile.ready()
    regional.begin()  # no waiting
    assert all(block._compiled_call_impl is None for block in blocks)
    assert regional.first_run("batch of one") is False  # eager: nothing to report
    gated_compiler.set()
    torch_compile.wait()
    assert regional.first_run("batch of one") is False  # not within a generation that began eager
    regional.begin()
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert regional.first_run("batch of one") is True  # compiles now: the caller reports it
    assert regional.first_run("batch of one") is False
    assert regional.first_run("larger batch") is True


def test_disabled_blocks_never_compile(gated_compiler):
    blocks = [nn.Linear(2, 2)]
    regional = torch_compile.Regional(blocks, enabled=False)
    gated_compiler.set()
    assert torch_compile._preparing is None  # nothing imported for it
    regional.begin()
    assert regional.first_run("batch of one") is False and blocks[0]._compiled_call_impl is None


def test_a_first_generation_does_not_wait_for_the_compiler(tiny_zimage_dir, gated_compiler, monkeypatch):
    """OLLIMG_COMPILE=on with the compiler's imports not done: the generation runs eagerly, with no
    "optimizing" status, and draws what OLLIMG_COMPILE=off draws."""
    monkeypatch.setenv("OLLIMG_COMPILE", "off")
    eager = load(tiny_zimage_dir, backend="torch", device="cpu").generate("a cat", width=32, height=32, steps=2, seed=1)
    monkeypatch.setenv("OLLIMG_COMPILE", "on")
    pipe = load(tiny_zimage_dir, backend="torch", device="cpu")
    steps = []
    first = pipe.generate("a cat", width=32, height=32, steps=2, seed=1, on_step=steps.append)
    assert not [s for s in steps if s.status]
    assert np.array_equal(first.latents, eager.latents)
    blocks = pipe.components.modules["transformer"].layers
    assert all(block._compiled_call_impl is None for block in blocks)
