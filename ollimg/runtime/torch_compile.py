"""torch.compile for the GPU: regional (a family's repeated block), cached on disk, reported.

What it fuses: the elementwise work around the GEMMs (RMSNorm, RoPE, the adaLN scale and gate,
residuals, fp8 activation quantization) becomes a few Triton kernels per block instead of dozens of
float32 round trips through memory. One compiled graph serves every block of a kind and, since
sequence length and batch are compiled as dynamic sizes, every resolution and prompt length: a
new shape is not compiled again (a batch of one and larger batches are two graphs, and a batch
whose prompts pad to different lengths, which needs an attention mask, another).

The compiler's imports (several seconds: dynamo, sympy, inductor) run on a thread, started by the
runtime's `prepare` (a spare runtime has them done before a model is named) or at load. No
generation waits for them: until they are done the blocks run eagerly, so the first image of a
fresh process comes at the eager start's time. The first generation after that compiles, on
demand, each graph it needs, and the family reports it as progress ("optimizing for this GPU,
once"). Inductor's FX graph cache, the AOT cache and Triton's
kernels live under `<user cache dir>/ollimg/compile`, keyed by torch's own hashes of the graph,
the software versions and the GPU, so a runtime that starts again pays only the tracing (seconds).

OLLIMG_COMPILE: auto (on for CUDA, default), on (CPU too: needs a C++ compiler), off.
"""

from __future__ import annotations

import logging
import os
import threading

import platformdirs
import torch
from torch import nn

from ollimg import config

log = logging.getLogger(__name__)

NOTICE = "optimizing for this device, once (cached on disk for later starts)"


def wanted(device: torch.device) -> bool:
    setting = config.compile_mode()
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def cache_dir() -> str:
    return os.path.join(platformdirs.user_cache_dir("ollimg", appauthor=False), "compile")


def _configure() -> None:
    """Caches under our cache dir (unless the user points torch elsewhere) and room for the few graphs."""
    root = cache_dir()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(root, "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(root, "triton"))
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    inductor.fx_graph_cache = True
    limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
    setattr(dynamo, limit, max(getattr(dynamo, limit), 64))


def _import_compiler() -> None:
    _configure()
    import torch._inductor.compile_fx  # noqa: F401  (otherwise imported at the first generation)


_preparing: threading.Thread | None = None


def prepare() -> None:
    """Imports the compiler (2-8 s) on a thread: in a spare runtime before a model is named, else
    while the weights are read."""
    global _preparing
    if _preparing is None:
        _preparing = threading.Thread(target=_import_compiler, name="compiler-import", daemon=True)
        _preparing.start()


def ready() -> bool:
    """Whether the compiler's imports, started by `prepare`, are done."""
    return _preparing is not None and not _preparing.is_alive()


def wait() -> None:
    """Waits for the compiler's imports, so that the next generation runs compiled (for benchmarks
    and tests that time or check the compiled path from its first run)."""
    prepare()
    _preparing.join()


class Regional:
    """A family's repeated blocks, compiled in place (one graph shared by blocks of the same class)
    once the compiler is imported, eager until then; switched only between generations, so that
    one runs all eager or all compiled. `enabled` False: always eager."""

    def __init__(self, blocks: list[nn.Module], enabled: bool):
        self.blocks, self.enabled, self.compiled = blocks, enabled, False
        self.seen: set = set()
        if enabled:
            prepare()

    def begin(self) -> None:
        """Called as a generation starts: compiles the blocks if the compiler is ready, else the
        generation runs them eagerly rather than wait."""
        if not self.enabled or self.compiled:
            return
        if not ready():
            log.info("eager while the compiler's imports finish")
            return
        _configure()  # again, cheap once imported: raises here what the thread could not
        for block in self.blocks:
            block.compile(fullgraph=True, dynamic=True)
        self.compiled = True
        log.info("torch.compile on for %d blocks (cache: %s)", len(self.blocks), os.environ["TORCHINDUCTOR_CACHE_DIR"])

    def first_run(self, variant) -> bool:
        """True when this run of the compiled blocks is the first of its graph `variant` (a batch
        kind), which compiles it or loads it from the cache: the caller reports it as progress."""
        if not self.compiled or variant in self.seen:
            return False
        self.seen.add(variant)
        return True
