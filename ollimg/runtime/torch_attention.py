"""Attention for the torch runtime's denoisers: F.scaled_dot_product_attention (PyTorch's choice of
kernel: cuDNN's flash attention on Hopper), or FlashAttention 4, the `flash-attn-4` package's CuTe
kernels, where it pays.

FlashAttention 4 is turned on when torch_compile.Regional compiles the blocks, and runs on Hopper
and Blackwell, in bfloat16 or float16, without a mask, only where the package is installed
(`pip install "ollimg[flash]"`; it is optional, and nothing else needs it). A runtime's first,
eager generation comes before that and keeps SDPA, so neither the package's import (seconds, on
the compiler-import thread) nor its kernel's first compile delays the first image. Its compiled
kernels are kept on disk beside torch.compile's. OLLIMG_ATTENTION=sdpa keeps SDPA everywhere.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from ollimg import config

log = logging.getLogger(__name__)

_flash_forward = None  # flash_attn.cute's forward, once import_flash found it
_flash_on = False  # set by use_flash, read as the blocks are traced
_flash_failed = False  # set when FlashAttention 4 raised: SDPA inside the op from then on


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """q, k, v (B, L, H, D); mask (B, L) bool, True where a key is attended, or None -> (B, L, H, D)."""
    if _flash_on and mask is None and q.dtype in (torch.bfloat16, torch.float16):
        return torch.ops.ollimg.flash_attention(q, k, v)
    return sdpa(q, k, v, mask)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """F.scaled_dot_product_attention over (B, L, H, D) tensors, mask as `attention`'s -> (B, L, H, D)."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=None if mask is None else mask[:, None, None, :],
    )  # (B, H, L, D)
    return out.transpose(1, 2)


@torch.library.custom_op("ollimg::flash_attention", mutates_args=())
def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FlashAttention 4's forward, opaque to torch.compile: q, k, v (B, L, H, D) -> (B, L, H, D).
    If it fails (its kernel would not compile here, say), SDPA computes this call and every later one,
    and the log says why once: a faster kernel is not worth a failed generation."""
    global _flash_failed
    if not _flash_failed:
        try:
            return _flash_forward(q, k, v)[0]
        except Exception as error:
            _flash_failed = True
            log.warning("FlashAttention 4 failed, PyTorch's SDPA from now on: %s", error)
    return sdpa(q, k, v).contiguous()


@flash_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return q.new_empty(q.shape)


def import_flash(cache_dir: str) -> bool:
    """Imports FlashAttention 4 if it is installed and wanted (seconds: torch_compile does it on
    its compiler-import thread), its compiled kernels kept in `cache_dir`; True if it is there."""
    global _flash_forward
    if _flash_forward is not None:
        return True
    if config.attention() == "sdpa":
        return False
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", cache_dir)
    try:
        from flash_attn.cute.interface import _flash_attn_fwd
    except Exception as error:  # not installed (the usual case), or a build that does not load here
        log.debug("FlashAttention 4 not available: %s", error)
        return False
    _flash_forward = _flash_attn_fwd
    return True


def use_flash(device: torch.device) -> bool:
    """Whether blocks compiled from now on run FlashAttention 4: imported, not OLLIMG_ATTENTION=sdpa,
    and `device` a Hopper or Blackwell GPU."""
    global _flash_on
    _flash_on = (_flash_forward is not None and config.attention() != "sdpa" and device.type == "cuda"
                 and torch.cuda.get_device_capability(device)[0] in (9, 10))
    if _flash_on:
        log.info("attention: FlashAttention 4 in the compiled blocks")
    return _flash_on
