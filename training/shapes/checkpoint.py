"""The DiT training's checkpoint: what a later call of train.py needs to go on where one stopped.

A checkpoint directory holds
- `state.json`: the step, the schedule's total, the recipe arguments, the RNG states, the VAE's
  latent shift and scale, the digest of the weights and a line per call (readable as it is);
- `weights.00`, `weights.01`, ...: the trained weights (DiT, text encoder) and the frozen VAE in
  bf16, byte planes compressed with zlib, in parts of 15 MiB (the device tool returns files of at
  most 16 MiB, and the repository plus these must stay under the 64 MiB a call carries);
- `full.pt`: the exact fp32 state (weights, EMA, AdamW moments; about 210 MB). Too large to
  travel, it stays on the machine that wrote it; with it a resume is exact, without it the
  training goes on from the bf16 weights (train.py says which).

Imports torch, numpy and safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

PART_BYTES = 15 * 2**20
STATE = "state.json"
FULL = "full.pt"


def pack(tensors: dict[str, torch.Tensor]) -> bytes:
    """bf16 tensors as safetensors bytes, the low and high byte of every value compressed apart:
    the high bytes (sign and exponent) shrink to about a third, the mantissa bytes hardly at all."""
    raw = save_safetensors({k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in tensors.items()})
    assert len(raw) % 2 == 0  # safetensors pads its header to 8 bytes: every value stays aligned
    planes = np.frombuffer(raw, np.uint8)
    low, high = zlib.compress(planes[0::2].tobytes(), 6), zlib.compress(planes[1::2].tobytes(), 6)
    return struct.pack("<QQ", len(raw), len(low)) + low + high


def unpack(blob: bytes) -> dict[str, torch.Tensor]:
    size, n_low = struct.unpack_from("<QQ", blob)
    head = struct.calcsize("<QQ")
    planes = np.empty(size, np.uint8)
    planes[0::2] = np.frombuffer(zlib.decompress(blob[head:head + n_low]), np.uint8)
    planes[1::2] = np.frombuffer(zlib.decompress(blob[head + n_low:]), np.uint8)
    return load_safetensors(planes.tobytes())


def write(directory: Path, state: dict, weights: dict[str, torch.Tensor], full: dict | None) -> None:
    """Replaces `directory` with a new checkpoint (written beside it, then renamed into place)."""
    blob = pack(weights)
    state = dict(state, digest="sha256:" + hashlib.sha256(blob).hexdigest())
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    parts = [blob[i:i + PART_BYTES] for i in range(0, len(blob), PART_BYTES)]
    state["parts"] = [f"weights.{i:02d}" for i in range(len(parts))]
    for name, part in zip(state["parts"], parts):
        (tmp / name).write_bytes(part)
    if full is not None:
        torch.save(dict(full, digest=state["digest"]), tmp / FULL)
    (tmp / STATE).write_text(json.dumps(state, indent=1) + "\n")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def read(directory: Path, also: Path | None = None) -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    """state, the bf16 weights, and the exact state if a `full.pt` of these weights is beside them
    or in `also` (where the last call on a machine still warm wrote it: the carried copy of its
    checkpoint comes without it)."""
    if not (directory / STATE).is_file():
        raise SystemExit(f"no checkpoint in {directory} (no {STATE}); a first call runs without --resume")
    state = json.loads((directory / STATE).read_text())
    blob = b"".join((directory / name).read_bytes() for name in state["parts"])
    if "sha256:" + hashlib.sha256(blob).hexdigest() != state["digest"]:
        raise SystemExit(f"the weights in {directory} do not match its {STATE} (a part missing or from another call)")
    for path in (directory / FULL, also / FULL if also else None):
        if path and path.is_file():
            full = torch.load(path, map_location="cpu", weights_only=True)
            if full["digest"] == state["digest"]:  # else it is of another checkpoint
                return state, unpack(blob), full
    return state, unpack(blob), None
