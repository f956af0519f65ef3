"""The scheduler's memory figures: the estimate, and free memory from /proc/meminfo or nvidia-smi."""

from __future__ import annotations

import os
from pathlib import Path

from ollimg.server import memory


def test_estimate_grows_with_size_and_count():
    small = memory.estimate(10**9, 512, 512)
    assert small > 10**9 + memory.OVERHEAD
    assert memory.estimate(10**9, 1024, 1024) - memory.estimate(10**9, 512, 512) == 3 * 512 * 512 * memory.BYTES_PER_PIXEL
    assert memory.estimate(10**9, 512, 512, n=2) > small


def test_free_reads_system_memory_without_a_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    free = memory.free()
    if Path("/proc/meminfo").exists():
        assert free is not None and free > 0


def _fake_nvidia_smi(tmp_path: Path, mib: str) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho '{mib}'\n")
    script.chmod(0o755)


def test_free_asks_nvidia_smi_when_cuda_may_be_used(monkeypatch, tmp_path):
    _fake_nvidia_smi(tmp_path, "2048")
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("OLLIMG_DEVICE", "cuda:1")
    assert memory.free() == 2048 * 1024**2
    monkeypatch.setenv("OLLIMG_DEVICE", "cpu")
    assert memory.free() != 2048 * 1024**2


def test_bad_nvidia_smi_output_falls_back(monkeypatch, tmp_path):
    _fake_nvidia_smi(tmp_path, "No devices were found")
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    assert memory._cuda_free() is None  # unreadable: no figure rather than a wrong one
    free = memory.free()
    assert free is None or free > 0  # the system figure
