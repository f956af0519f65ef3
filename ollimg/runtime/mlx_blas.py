"""A fast BLAS for MLX's CPU backend on Linux.

The Linux `mlx[cpu]` wheel bundles the reference (netlib) BLAS, whose sgemm is about 20x slower
than OpenBLAS here (bench/README.md: the shapes model at 128x128 takes 4.4 s per image on MLX
with it, 0.5 s with OpenBLAS). When the system has OpenBLAS (Debian: libopenblas0-pthread),
loading it with RTLD_GLOBAL before MLX is first imported makes MLX's cblas calls bind to it: the
same C ABI, which is how Debian's BLAS alternatives swap implementations. `OLLIMG_MLX_BLAS`:
`auto` (default: OpenBLAS when found), `bundled` (keep the wheel's), or a library path.

Must run before the first `import mlx.core`; does nothing on macOS (MLX uses Accelerate there).
Not done in a process that has loaded torch: a global OpenBLAS would interpose torch's own BLAS
calls too (measured: torch 3x slower on the shapes model). A runtime process runs one backend,
so an MLX runtime gets it. Imports nothing from mlx or torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import sys

from ollimg import config
from ollimg.errors import InvalidInput

log = logging.getLogger(__name__)
_loaded: str | None = None


def find() -> str | None:
    """The OpenBLAS library to use, or None (bundled BLAS)."""
    choice = config.mlx_blas()
    if choice == "bundled" or platform.system() != "Linux":
        return None
    if choice != "auto":
        return choice
    for name in ("openblas", "openblasp", "openblaso"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def load() -> str | None:
    """Load OpenBLAS globally before MLX; returns the library loaded (None: MLX keeps its own)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    path = find()
    if path is None:
        return None
    if "mlx.core" in sys.modules or "torch" in sys.modules:
        log.info("mlx or torch is already loaded in this process; MLX keeps its bundled BLAS")
        return None
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        if config.mlx_blas() != "auto":
            raise InvalidInput(f"OLLIMG_MLX_BLAS={path!r} cannot be loaded: {e}") from None
        log.info("OpenBLAS %s cannot be loaded (%s); MLX keeps its bundled BLAS", path, e)
        return None
    _loaded = path
    log.info("MLX uses %s", path)
    return path
