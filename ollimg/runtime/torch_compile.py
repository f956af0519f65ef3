"""torch.compile for the GPU: regional (a family's repeated blocks: its denoiser's, its text
encoder's layers), cached on disk, reported.

What it fuses: the elementwise work around the GEMMs (RMSNorm, RoPE, the adaLN scale and gate,
residuals, fp8 activation quantization) becomes a few Triton kernels per block instead of dozens of
float32 round trips through memory. One compiled graph serves every block of a kind and, since
sequence length and batch are compiled as dynamic sizes, every resolution and prompt length: a
new shape is not compiled again (a batch of one and larger batches are two graphs, and a batch
whose prompts pad to different lengths, which needs an attention mask, another).

When: OLLIMG_COMPILE=auto (the default) compiles on CUDA, but not a load's first generation: that
one runs eagerly, an image as soon as the weights are in, with nothing to trace and no
compiler imports beside it (they would take the interpreter from the loader and the eager loop:
measured on the H200, a first image at 14.1 s instead of 7.1 s). The compiler's imports (dynamo,
sympy, inductor: 2-8 s) then run on a thread after it, unless a spare runtime's `prepare` did them
before a model was named, and the load's second generation waits for them if need be and compiles
each graph it needs, on demand, reported as progress ("optimizing for this device, once", from the
start of the wait); a generation never switches midway. (It once ran eagerly beside imports not
yet done: on the H200 that generation took 9.8-11 s instead of 1.4, the import thread taking the
interpreter from the launch-bound eager loop, and the next one paid the compile anyway;
bench/README.md, 2026-12-03.)
`on` compiles from the first generation (waiting for the imports; the CPU too, with a C++
compiler); `off` never. Inductor's FX graph cache, the AOT cache and Triton's
kernels live under `<user cache dir>/ollimg/compile`, keyed by torch's own hashes of the graph,
the software versions and the GPU, so a runtime that starts again pays only the tracing (seconds).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

import platformdirs
import torch
from torch import nn

from ollimg import config
from ollimg.runtime import torch_attention

log = logging.getLogger(__name__)

NOTICE = "optimizing for this device, once (cached on disk for later starts)"


def wanted(device: torch.device) -> bool:
    setting = config.compile_mode()
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def cache_dir() -> str:
    return os.path.join(platformdirs.user_cache_dir("ollimg", appauthor=False), "compile")


def flash_cache_dir() -> str:
    """FlashAttention 4's compiled kernels (ollimg/runtime/torch_attention.py)."""
    return os.path.join(cache_dir(), "flash")


def _configure() -> None:
    """Caches under our cache dir (unless the user points torch elsewhere), room for the few graphs,
    and our one change to Inductor's heuristics (torch_compile_heuristics)."""
    root = cache_dir()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(root, "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(root, "triton"))
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    inductor.fx_graph_cache = True
    if getattr(inductor, "inductor_choices_class", False) is None:  # where torch has it; a user's own wins
        from ollimg.runtime import torch_compile_heuristics

        inductor.inductor_choices_class = torch_compile_heuristics.Choices
    limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
    setattr(dynamo, limit, max(getattr(dynamo, limit), 64))


def _import_compiler() -> None:
    _configure()
    import torch._inductor.compile_fx  # noqa: F401  (otherwise imported at the first generation)

    torch_attention.import_flash(flash_cache_dir())


_preparing: threading.Thread | None = None


def prepare() -> None:
    """Imports the compiler (2-8 s) on a thread: in a spare runtime before a model is named, else
    after a load's first generation (or at load with OLLIMG_COMPILE=on)."""
    global _preparing
    if _preparing is None:
        _preparing = threading.Thread(target=_import_compiler, name="compiler-import", daemon=True)
        _preparing.start()


def ready() -> bool:
    """Whether the compiler's imports, started by `prepare`, are done."""
    return _preparing is not None and not _preparing.is_alive()


def wait() -> None:
    """Starts the compiler's imports if need be and waits for them."""
    prepare()
    _preparing.join()


class Regional:
    """A family's repeated blocks, compiled in place (one graph shared by blocks of the same class)
    when OLLIMG_COMPILE says so (module docstring). The family calls `begin` and `end` around each
    generation and `first_run` before each run of the blocks."""

    def __init__(self, blocks: list[nn.Module], device: torch.device):
        setting = config.compile_mode()
        self.blocks, self.device, self.enabled, self.compiled = blocks, device, wanted(device), False
        self.eager_first = setting == "auto"  # else `on`: compiled from the first generation
        self.generations = 0
        self.seen: set = set()
        self.reported = False  # this generation has said it compiles
        if self.enabled and not self.eager_first:
            prepare()

    def begin(self, on_status: Callable[[str], None] | None = None) -> None:
        """As a generation starts: compiles the blocks if it is time to (never within a generation).
        A wait for the compiler's imports is the start of that one-off work: reported through
        `on_status` as it begins, in place of the first run's report."""
        self.reported = False
        if not self.enabled or self.compiled:
            return
        if self.eager_first and self.generations == 0:
            log.info("eager: the first generation after a load")
            return
        if not ready():
            log.info("waiting for the compiler's imports")
            if on_status is not None:
                on_status(NOTICE)
                self.reported = True
        wait()
        _configure()  # again, cheap once imported: raises here what the thread could not
        torch_attention.import_flash(flash_cache_dir())  # done on the thread, unless OLLIMG_ATTENTION changed since
        torch_attention.use_flash(self.device)
        for block in self.blocks:
            block.compile(fullgraph=True, dynamic=True)
        self.compiled = True
        log.info("torch.compile on for %d blocks (cache: %s)", len(self.blocks), os.environ["TORCHINDUCTOR_CACHE_DIR"])

    def end(self) -> None:
        """As a generation ends (done or failed): the compiler's imports start, if not started yet."""
        self.generations += 1
        if self.enabled and not self.compiled:
            prepare()

    def first_run(self, variant) -> bool:
        """True when this run of the compiled blocks is the first of its graph `variant` (which
        blocks, a batch kind), which compiles it or loads it from the cache, and the generation has
        not said so yet: the caller reports it as progress, once a generation."""
        if not self.compiled or variant in self.seen:
            return False
        self.seen.add(variant)
        if self.reported:
            return False
        self.reported = True
        return True
