"""When the denoiser's blocks compile (OLLIMG_COMPILE; ollimg/runtime/torch_compile.py): with auto
on CUDA a load's first generation runs eagerly with no compiler imports beside it, the imports
start after it, and the second generation waits for them if need be and compiles; `on` compiles
from the first generation, waiting for the imports; `off` and auto on the CPU never. The compiled results themselves: test_zimage_fast_paths.py (CPU) and
tests/parity/test_cuda_parity.py (the GPU, also auto through a real pipeline)."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from ollimg.runtime import load, torch_compile

CUDA = torch.device("cuda")  # Regional only looks at the device's type: no GPU needed here


@pytest.fixture
def gate(monkeypatch, tmp_path):
    """The compiler's import thread, not started yet, held until the test opens the gate."""
    opened = threading.Event()
    monkeypatch.setattr(torch_compile, "_preparing", None)
    monkeypatch.setattr(torch_compile, "_import_compiler", lambda: opened.wait(60))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    yield opened
    opened.set()
    if torch_compile._preparing is not None:
        torch_compile._preparing.join()


def compiled(blocks) -> list[bool]:
    return [block._compiled_call_impl is not None for block in blocks]


def test_auto_runs_a_loads_first_generation_eagerly_then_compiles(gate, monkeypatch):
    monkeypatch.setenv("OLLIMG_COMPILE", "auto")
    blocks = [nn.Linear(2, 2), nn.Linear(2, 2)]
    regional = torch_compile.Regional(blocks, CUDA)
    regional.begin()
    assert torch_compile._preparing is None  # no imports beside the first generation
    assert compiled(blocks) == [False, False] and regional.first_run("batch of one") is False
    regional.end()
    assert torch_compile._preparing is not None and not torch_compile.ready()  # they start after it
    threading.Timer(0.3, gate.set).start()
    regional.begin()  # the second generation waits for the imports (not eager beside them)
    assert torch_compile.ready() and compiled(blocks) == [True, True]
    assert regional.first_run("batch of one") is True  # compiles now: the caller reports it
    assert regional.first_run("batch of one") is False
    assert regional.first_run("larger batch") is False  # reported once a generation
    regional.end()
    regional.begin()
    assert regional.first_run("larger batch") is False  # seen, though not reported
    assert regional.first_run("a mask") is True


def test_a_wait_for_the_compilers_imports_is_reported_once_as_it_starts(gate, monkeypatch):
    monkeypatch.setenv("OLLIMG_COMPILE", "auto")
    regional = torch_compile.Regional([nn.Linear(2, 2)], CUDA)
    statuses = []
    regional.begin(statuses.append)
    regional.end()
    assert statuses == []  # the first generation is eager: nothing to report
    gate_open = []
    threading.Timer(0.3, lambda: (gate_open.append(list(statuses)), gate.set())).start()
    regional.begin(statuses.append)
    assert gate_open == [[torch_compile.NOTICE]]  # said before the wait, not after it
    assert regional.first_run("batch of one") is False and statuses == [torch_compile.NOTICE]
    regional.end()
    regional.begin(statuses.append)
    assert regional.first_run("a mask") is True and statuses == [torch_compile.NOTICE]  # the caller reports this one


def test_auto_compiles_a_spares_imported_compiler_from_the_second_generation(gate, monkeypatch):
    monkeypatch.setenv("OLLIMG_COMPILE", "auto")
    gate.set()
    torch_compile.wait()  # a spare runtime's prepare did the imports before the load
    blocks = [nn.Linear(2, 2)]
    regional = torch_compile.Regional(blocks, CUDA)
    regional.begin()
    assert compiled(blocks) == [False]
    regional.end()
    regional.begin()
    assert compiled(blocks) == [True]


def test_on_compiles_from_the_first_generation_waiting_for_the_imports(gate, monkeypatch):
    monkeypatch.setenv("OLLIMG_COMPILE", "on")
    blocks = [nn.Linear(2, 2)]
    regional = torch_compile.Regional(blocks, torch.device("cpu"))
    assert torch_compile._preparing is not None  # started at load
    threading.Timer(0.3, gate.set).start()
    regional.begin()  # waits for the gate
    assert compiled(blocks) == [True] and regional.first_run("batch of one") is True


@pytest.mark.parametrize("setting, device", [("off", CUDA), ("auto", torch.device("cpu"))])
def test_blocks_that_never_compile_import_nothing(gate, monkeypatch, setting, device):
    monkeypatch.setenv("OLLIMG_COMPILE", setting)
    blocks = [nn.Linear(2, 2)]
    regional = torch_compile.Regional(blocks, device)
    for _ in range(2):
        regional.begin()
        regional.end()
    assert torch_compile._preparing is None and compiled(blocks) == [False]
    assert regional.first_run("batch of one") is False


def test_the_pipeline_calls_begin_and_end_around_each_generation(tiny_zimage_dir, monkeypatch):
    """end comes also when a generation fails (here: cancelled from its step callback)."""
    monkeypatch.setenv("OLLIMG_COMPILE", "off")
    pipe = load(tiny_zimage_dir, backend="torch", device="cpu")
    calls = []
    pipe.components.begin, pipe.components.end = lambda: calls.append("begin"), lambda: calls.append("end")
    pipe.generate("a cat", width=32, height=32, steps=2, seed=1)
    assert calls == ["begin", "end"]

    def cancel(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe.generate("a cat", width=32, height=32, steps=2, seed=1, on_step=cancel)
    assert calls == ["begin", "end", "begin", "end"]


def test_the_pipeline_gives_begin_its_progress_callback(tiny_zimage_dir, monkeypatch):
    """What `Regional.begin` reports reaches the generation's progress as step 0."""
    monkeypatch.setenv("OLLIMG_COMPILE", "off")
    monkeypatch.setattr(torch_compile.Regional, "begin", lambda self, on_status=None: on_status("one-off work"))
    pipe = load(tiny_zimage_dir, backend="torch", device="cpu")
    steps = []
    pipe.generate("a cat", width=32, height=32, steps=2, seed=1, on_step=steps.append)
    assert [(s.step, s.status) for s in steps if s.step == 0] == [(0, "one-off work")]


def test_reductions_over_a_head_are_single_pass_larger_ones_as_inductor_says(monkeypatch):
    """ollimg/runtime/torch_compile_heuristics.py, with Inductor's own answer faked: where Inductor
    says single-pass it stands; otherwise a reduction of a size known when compiling, up to a head
    (256), is single-pass, and a larger, dynamic or cooperative one is not. The generated kernels
    themselves: bench/block_kernels.py and the CUDA parity tests, on the GPU."""
    import sympy
    from types import SimpleNamespace

    from torch._inductor.choices import InductorChoices

    from ollimg.runtime.torch_compile_heuristics import Choices

    def single_pass(size, cooperative=False) -> bool:
        return Choices.should_use_persistent_reduction(SimpleNamespace(reduction_numel=size), cooperative)

    monkeypatch.setattr(InductorChoices, "should_use_persistent_reduction", staticmethod(lambda f, c: False))
    assert single_pass(sympy.Integer(128)) and single_pass(sympy.Integer(256))
    assert not single_pass(sympy.Integer(512)) and not single_pass(sympy.Integer(3840))
    assert not single_pass(sympy.Symbol("s27") * 30) and not single_pass(sympy.Integer(128), cooperative=True)
    monkeypatch.setattr(InductorChoices, "should_use_persistent_reduction", staticmethod(lambda f, c: True))
    assert single_pass(sympy.Integer(3840))


def test_configure_installs_the_heuristics_unless_the_user_has_their_own(monkeypatch, tmp_path):
    import torch._inductor.config as inductor

    from ollimg.runtime.torch_compile_heuristics import Choices

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setattr(inductor, "inductor_choices_class", None)
    torch_compile._configure()
    assert inductor.inductor_choices_class is Choices
    assert Choices().uuid()  # what Inductor's cache key takes from it

    class Theirs(Choices):
        pass

    monkeypatch.setattr(inductor, "inductor_choices_class", Theirs)
    torch_compile._configure()
    assert inductor.inductor_choices_class is Theirs
