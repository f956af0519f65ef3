"""The torch backend (CUDA or CPU): device and dtype choice, memory-mapped weight loading, and the
Backend protocol of `ollimg/runtime/backend.py`.

Weights are memory-mapped from the blobs (or shards): `np.memmap` at the tensor's byte offset
-> `torch.from_numpy` -> reinterpreted as bfloat16 / float8_e4m3fn. On CPU in the stored dtype
nothing is copied; otherwise the only copy is the one on the device (or the converted one).
Modules are built on the meta device and get the loaded tensors assigned, so no random init
and no second copy happen.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ollimg import config
from ollimg.blobs import TensorRef
from ollimg.errors import InvalidInput, InvalidModel

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STORED = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F8_E4M3": torch.float8_e4m3fn}
FP8 = torch.float8_e4m3fn


FP8_MAX = 448.0  # largest finite float8 E4M3 value
ACTIVATION_ROOM = 3 << 30  # above the weights: a 1024x1024 image peaked 2.4 GiB over them on an H100 (bench/README.md)


@functools.cache
def fp8_matmul(device: torch.device) -> bool:
    """Whether fp8 weights on `device` are multiplied in fp8: CUDA with compute capability 8.9+
    (Ada, Hopper and later), torch with `_scaled_mm`, and OLLIMG_FP8_MATMUL not off."""
    if device.type != "cuda" or not hasattr(torch, "_scaled_mm") or not config.fp8_matmul():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def scaled_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """x @ (weight * weight_scale).T + bias as one fp8 matmul: x (..., K) bf16, weight (N, K) fp8.

    Each row (token) of x is scaled into the fp8 range by its own absolute maximum; both scales
    (per token, per output channel) are applied in the kernel, which accumulates in fp32 (Hopper's
    fast accumulation: partial sums promoted every few k-blocks, within `bench/fp8_quality.py`'s
    figures). Under torch.compile the scaling pass fuses into the op that produced x.
    """
    rows = x.reshape(-1, x.shape[-1])  # (M, K)
    amax = torch.linalg.vector_norm(rows, float("inf"), dim=1, keepdim=True, dtype=torch.float32)  # (M, 1)
    # The multiplier is rounded to x's dtype (one multiply, no float32 copy of x); the headroom
    # keeps that rounding from pushing a value out of e4m3's range (past it the cast gives NaN).
    inverse = (FP8_MAX * (1 - 2 ** -7) / amax.clamp_(min=1e-12)).to(x.dtype)
    x8 = (rows * inverse).to(FP8)
    out = torch._scaled_mm(x8, weight.t(), scale_a=inverse.float().reciprocal(), scale_b=weight_scale[None, :],
                           bias=bias, out_dtype=torch.bfloat16, use_fast_accum=True)  # (M, N)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def host_to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array (a step's timesteps, the first latents) on `device`, without the host waiting:
    on CUDA it goes through pinned memory, copied on the current stream. A plain `.to(device)` from
    pageable memory waits for all the GPU work queued before it, so the GPU would idle at each step's
    start while the host launches that step's first small kernels. On the CPU, no copy if `array` is
    contiguous."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class Linear(nn.Module):
    """nn.Linear that also takes a float8 E4M3 weight with a per-output-channel float32 `weight_scale`.

    A float8 weight stays float8 in memory. On a GPU with fp8 tensor cores the matmul runs in fp8
    (`scaled_linear`); elsewhere the weight is dequantized (w.float() * scale[:, None]) per call.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.weight_scale: torch.Tensor | None = None
        self.fp8_kernel = False  # set by `assign`: fp8 weight and `fp8_matmul` on its device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight.dtype == FP8:
            if x.dtype == torch.bfloat16 and weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0 and self.fp8_kernel:
                return scaled_linear(x, weight, self.weight_scale, self.bias)
            weight = (weight.float() * self.weight_scale[:, None]).to(x.dtype)
        return F.linear(x, weight, self.bias)


def assign(module: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> nn.Module:
    """Put loaded tensors into a module built on the meta device; every parameter must be given."""
    for name, tensor in tensors.items():
        path, _, leaf = name.rpartition(".")
        owner = module.get_submodule(path) if path else module
        if leaf.endswith("_scale"):
            setattr(owner, leaf, tensor)
        else:
            setattr(owner, leaf, nn.Parameter(tensor, requires_grad=False))
    missing = [n for n, p in module.named_parameters() if p.is_meta]
    if missing:
        raise InvalidModel(f"{where}: weight {missing[0]} is missing")
    for linear in module.modules():
        if isinstance(linear, Linear) and linear.weight.dtype == FP8:
            linear.fp8_kernel = fp8_matmul(linear.weight.device)
    return module


class TorchBackend:
    name = "torch"

    def __init__(self, device: str | None = None, dtype: str | None = None):
        wanted = (device or config.device() or "auto").lower()
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidInput(f"device {wanted!r} asked for, but torch sees no CUDA GPU; use device cpu")
        if not (wanted == "cpu" or wanted.startswith("cuda")):
            raise InvalidInput(f"unknown torch device {wanted!r}: use cpu, cuda or cuda:N")
        self.device = torch.device(wanted)
        self.processor = "CUDA" if self.device.type == "cuda" else "CPU"
        self.dtype = dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
        if self.dtype not in DTYPES:
            raise InvalidInput(f"unsupported dtype {self.dtype!r}: use float32, bfloat16 or float16")
        self.torch_dtype = DTYPES[self.dtype]
        self._bytes = 0

    # --- the Backend protocol ---
    def from_numpy(self, array: np.ndarray) -> torch.Tensor:
        return host_to_device(array, self.device)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().float().cpu().numpy()

    def concat(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, dim=0)

    def norm(self, x: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(x.float()))

    def mean_abs(self, x: torch.Tensor) -> float:
        return float(x.float().abs().mean())

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fence(self, x: torch.Tensor) -> "_Fence":
        return _Fence(self.device)

    def memory(self) -> int:
        return self._bytes

    def load_tensors(self, refs: dict[str, TensorRef], dtype: torch.dtype | None = None,
                     resident: bool = True, device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
        """Memory-mapped tensors on the device; floats in `dtype` (default: the compute dtype), fp8 kept.

        `resident=False`: tensors loaded for one call and freed after, not counted in `memory()`.
        `device="cpu"`: left mapped in the stored dtype (no copy), whatever the backend's device.
        """
        dtype = dtype or self.torch_dtype
        device = torch.device(device) if device is not None else self.device
        staged = not resident and device.type == "cuda"
        if resident and device.type == "cuda":
            out = upload(refs, device, dtype)
            self._bytes += sum(t.numel() * t.element_size() for t in out.values())
            return out
        out = {}
        for name, ref in refs.items():
            tensor = mapped(ref)
            if device.type == "cpu" and self.device.type != "cpu":
                pass  # a CPU-side table for a GPU run (the text encoder's embedding)
            elif staged:
                # Through pinned memory (torch caches those blocks, so a layer reuses the last
                # one's): the upload then runs at the bus's speed, not at pageable memory's.
                pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor)
                tensor = pinned.to(device, non_blocking=True)
                if tensor.dtype != FP8 and not name.endswith("_scale"):
                    tensor = tensor.to(dtype)
            elif tensor.dtype == FP8 or name.endswith("_scale"):
                tensor = tensor.to(device)
            else:
                tensor = tensor.to(device, dtype)
            if resident:
                self._bytes += tensor.numel() * tensor.element_size()
            out[name] = tensor
        return out

    def device_bytes(self, refs: dict[str, TensorRef]) -> int:
        """What `load_tensors(refs)` will take on the device."""
        size = self.torch_dtype.itemsize
        return sum(ref.nbytes if ref.dtype == "F8_E4M3" or name.endswith("_scale") else math.prod(ref.shape) * size
                   for name, ref in refs.items())

    def offload(self, offloadable: int, resident: int) -> bool:
        """Whether `offloadable` bytes of weights (the text encoder) are uploaded per call instead of
        kept on the device, next to `resident` bytes that stay (OLLIMG_OFFLOAD)."""
        setting = config.offload()
        if setting != "auto":
            return setting == "always"
        if self.device.type != "cuda":
            return False  # CPU weights are memory-mapped already: nothing to free
        free, _ = torch.cuda.mem_get_info(self.device)
        return offloadable + resident + ACTIVATION_ROOM > free

    def loaded(self) -> None:
        if self.device.type == "cuda":
            release_staging()

    def prepare(self) -> None:
        from ollimg.runtime import torch_compile

        if torch_compile.wanted(self.device):
            torch_compile.prepare()


class _Fence:
    """A CUDA event recorded on the current stream (nothing to wait for on the CPU)."""

    def __init__(self, device: torch.device):
        self.event = None
        if device.type == "cuda":
            self.event = torch.cuda.Event()
            self.event.record()

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


def load_module(backend: TorchBackend, module_cls, args: tuple, refs: dict[str, TensorRef], where: str,
                resident: bool = True) -> nn.Module:
    """`module_cls(*args)` built on the meta device with the loaded tensors assigned, in eval mode."""
    with torch.device("meta"):
        module = module_cls(*args)
    return assign(module, backend.load_tensors(refs, resident=resident), where).eval()


READERS = 16  # threads reading weights: enough to keep an NVMe queue or a network disk busy
STAGE_BYTES = 32 << 20  # each reader's two pinned staging buffers (1 GiB pinned in all)


def upload(refs: dict[str, TensorRef], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Tensors on the GPU, read by parallel threads through fixed pinned staging buffers and
    copied asynchronously while the next piece is read. Each reader pins its two buffers once:
    pinning memory per tensor (20 GB of it for a large model) costs more than reading it. The
    buffers stay in torch's pinned cache for the next component's upload until `release_staging`
    (the runtime's load calls it at the end). Floats in `dtype` (converted on the GPU); fp8
    weights and their scales as stored."""
    pending = sorted(refs.items(), key=lambda kv: kv[1].nbytes)  # pop() takes the largest first
    out: dict[str, torch.Tensor] = {}
    started, nbytes = time.perf_counter(), sum(ref.nbytes for ref in refs.values())

    def reader() -> None:
        stream = torch.cuda.Stream(device)
        stage = _Stage(stream)
        while True:
            try:
                name, ref = pending.pop()
            except IndexError:
                break
            keep = name.endswith("_scale") or STORED.get(ref.dtype) in (FP8, dtype)
            out[name] = stage.upload(ref, device, None if keep else dtype)
        stream.synchronize()

    readers = min(READERS, len(refs))
    with ThreadPoolExecutor(max(readers, 1), thread_name_prefix="weights") as pool:
        for future in [pool.submit(reader) for _ in range(readers)]:
            future.result()
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    log.info("read %d tensors, %.2f GB, in %.2f s (%.2f GB/s)", len(refs), nbytes / 1e9, seconds, nbytes / 1e9 / seconds)
    return {name: out[name] for name in refs}


def release_staging() -> None:
    """Gives back the pinned staging buffers that `upload` leaves in torch's pinned-memory cache.
    Uploads keep them so that the next component's upload reuses them: pinning its 1 GiB afresh
    would cost more than reading a small component."""
    if hasattr(torch._C, "_host_emptyCache"):
        torch._C._host_emptyCache()


class _Stage:
    """One reader's two pinned buffers on its own CUDA stream: piece i+1 is read from the file
    into one while piece i is copied to the GPU from the other."""

    def __init__(self, stream: torch.cuda.Stream):
        self.stream = stream
        self.buffers = [torch.empty(STAGE_BYTES, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self.views = [memoryview(b.numpy()) for b in self.buffers]
        self.copied: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def upload(self, ref: TensorRef, device: torch.device, convert: torch.dtype | None) -> torch.Tensor:
        if ref.dtype not in STORED:
            raise InvalidModel(f"{ref.path}: tensor dtype {ref.dtype} is not supported")
        raw = torch.empty(ref.nbytes, dtype=torch.uint8, device=device)  # allocated on the default stream
        with open(ref.path, "rb", buffering=0) as f:
            for start in range(0, ref.nbytes, STAGE_BYTES):
                n = min(STAGE_BYTES, ref.nbytes - start)
                i, self.turn = self.turn, 1 - self.turn
                if self.copied[i] is not None:
                    self.copied[i].synchronize()  # the buffer's last copy is done: it can be refilled
                _read_into(f, self.views[i][:n], ref.offset + start, ref.path)
                with torch.cuda.stream(self.stream):
                    raw[start:start + n].copy_(self.buffers[i][:n], non_blocking=True)
                    self.copied[i] = torch.cuda.Event()
                    self.copied[i].record(self.stream)
        tensor = raw.view(STORED[ref.dtype]).reshape(ref.shape)
        if convert is None:
            return tensor
        converted = torch.empty(ref.shape, dtype=convert, device=device)
        with torch.cuda.stream(self.stream):
            converted.copy_(tensor)
        raw.record_stream(self.stream)  # freed now, reused only after the stream's copy
        return converted


def _read_into(f, view: memoryview, offset: int, path) -> None:
    done = 0
    while done < len(view):
        got = os.preadv(f.fileno(), [view[done:]], offset + done)
        if got == 0:
            raise InvalidModel(f"{path}: file ends {len(view) - done} bytes before tensor data does")
        done += got


def mapped(ref: TensorRef) -> torch.Tensor:
    """A CPU tensor over the file's bytes (copy-on-write map: nothing is read until used)."""
    if ref.dtype not in STORED:
        raise InvalidModel(f"{ref.path}: tensor dtype {ref.dtype} is not supported")
    if ref.nbytes == 0:
        return torch.empty(ref.shape, dtype=STORED[ref.dtype])
    raw = np.memmap(ref.path, dtype=np.uint8, mode="c", offset=ref.offset, shape=(ref.nbytes,))
    return torch.from_numpy(raw).view(STORED[ref.dtype]).reshape(ref.shape)
