"""torch.compile for the GPU: regional (a family's repeated block), cached on disk, reported.

What it fuses: the elementwise work around the GEMMs (RMSNorm, RoPE, the adaLN scale and gate,
residuals, fp8 activation quantization) becomes a few Triton kernels per block instead of dozens of
float32 round trips through memory. One compiled graph serves every block of a kind and, since
sequence length and batch are compiled as dynamic sizes, every resolution and prompt length: a
new shape is not compiled again (a batch of one and larger batches are two graphs, and a batch
whose prompts pad to different lengths, which needs an attention mask, another).

Compiling happens on demand, at the first generation that needs a graph: the family reports it as
progress ("optimizing for this GPU, once"). Inductor's FX graph cache, the AOT cache and Triton's
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
    """Imports the compiler (about 2 s) on a thread, while the caller reads the weights."""
    global _preparing
    if _preparing is None:
        _preparing = threading.Thread(target=_import_compiler, name="compiler-import", daemon=True)
        _preparing.start()


def compile_blocks(blocks: list[nn.Module]) -> None:
    """Compile each module's forward in place (one graph shared by modules of the same class)."""
    prepare()
    _preparing.join()
    _configure()  # again, cheap once imported: raises here what the thread could not
    for block in blocks:
        block.compile(fullgraph=True, dynamic=True)
    log.info("torch.compile on for %d blocks (cache: %s)", len(blocks), os.environ["TORCHINDUCTOR_CACHE_DIR"])


class FirstUse:
    """Remembers which graph variants have run, so that the first run of each is reported."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.seen: set = set()

    def first(self, key) -> bool:
        if not self.enabled or key in self.seen:
            return False
        self.seen.add(key)
        return True
