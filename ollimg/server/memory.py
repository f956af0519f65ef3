"""Memory figures the scheduler decides with: an estimate for a model at a size, free memory, and
what each runtime really holds.

Rough on purpose and in one place. Free memory comes from /proc/meminfo (MemAvailable) or, when a
CUDA device will be used, from `nvidia-smi`; no psutil, no torch. What a runtime holds (`held`) is
its process's resident memory (/proc/<pid>/status VmRSS, read by the runtime object) and the GPU
memory its allocator reports; `ps`, admission and eviction all use these figures. Imports config only.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Any

from ollimg import config

log = logging.getLogger(__name__)

OVERHEAD = 512 * 1024**2  # interpreter, torch/mlx libraries, allocator slack
BYTES_PER_PIXEL = 1536  # VAE decoder peak: ~128 fp32 channels at full resolution, about 3 live buffers


def estimate(weights: int, width: int, height: int, n: int = 1) -> int:
    """Bytes a runtime needs: its weights plus activations for `n` images of `width` x `height`."""
    return weights + OVERHEAD + n * width * height * BYTES_PER_PIXEL


def held(runtime: Any) -> tuple[int, int]:
    """(host bytes, GPU bytes) a runtime holds now: measured where the runtime can tell, else the
    bytes of its weights (a runtime object without `host_memory`, such as a test fake)."""
    gpu = int(getattr(runtime, "gpu_memory", 0) or 0)
    host = getattr(runtime, "host_memory", None)
    if host is None:
        host = 0 if gpu else int(getattr(runtime, "memory", 0) or 0)
    return int(host), gpu


def on_device(runtime: Any) -> int:
    """The bytes a runtime holds on the device models load to: its GPU memory if it has any, else host memory."""
    host, gpu = held(runtime)
    return gpu or host


def device_label() -> str:
    """What `free()` measures, for messages."""
    return "GPU memory" if _cuda_free() is not None else "memory"


def free() -> int | None:
    """Free bytes on the device models will load to, or None when it cannot be told."""
    gpu = _cuda_free()
    return gpu if gpu is not None else _system_available()


def _system_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cuda_free() -> int | None:
    dev = config.device()
    if dev == "cpu" or config.backend() == "mlx" or not shutil.which("nvidia-smi"):
        return None
    index = dev.split(":", 1)[1] if dev.startswith("cuda:") else "0"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        return int(out.split()[0]) * 1024**2
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        log.debug("nvidia-smi gave no free memory figure", exc_info=True)
        return None
