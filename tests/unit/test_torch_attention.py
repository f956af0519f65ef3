"""The torch runtime's attention (ollimg/runtime/torch_attention.py): SDPA on (B, L, H, D) tensors
with an optional key mask, and when FlashAttention 4 is used instead. FlashAttention 4 itself runs
only on a Hopper or Blackwell GPU with the package installed: tests/parity/test_cuda_parity.py."""

from __future__ import annotations

import math
import os
import sys
import types

import pytest
import torch

from ollimg.errors import InvalidInput
from ollimg.runtime import torch_attention


def softmax_attention(q, k, v, mask=None):
    """The textbook formula, per batch and head, in float64."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)  # (B, L, H, D)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_is_softmax_attention_over_b_l_h_d(masked):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 8) for _ in range(3))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3]) if masked else None
    out = torch_attention.attention(q, k, v, mask)
    assert out.shape == (2, 7, 3, 8)
    torch.testing.assert_close(out.double(), softmax_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_flash_is_not_used_without_the_package_or_off_the_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(torch_attention, "_flash_forward", None)
    monkeypatch.setattr(torch_attention, "_flash_on", False)
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # as if not installed
    assert not torch_attention.import_flash(str(tmp_path))
    assert not torch_attention.use_flash(torch.device("cuda"))  # nothing imported: no GPU is asked
    monkeypatch.setattr(torch_attention, "_flash_forward", lambda q, k, v: (q,))
    assert not torch_attention.use_flash(torch.device("cpu"))
    q = torch.randn(1, 5, 2, 8, dtype=torch.bfloat16)
    torch.testing.assert_close(torch_attention.attention(q, q, q), softmax_attention(q, q, q).to(q.dtype))


def test_flash_runs_through_the_op_once_on(monkeypatch):
    """Once on: unmasked 16-bit attention goes to FlashAttention 4's forward (here a stand-in that
    records its call), a masked or float32 one stays with SDPA."""
    calls = []
    monkeypatch.setattr(torch_attention, "_flash_forward", lambda q, k, v: (calls.append(q.shape) or v.clone(), None))
    monkeypatch.setattr(torch_attention, "_flash_on", True)
    q = torch.randn(1, 5, 2, 8, dtype=torch.bfloat16)
    assert torch.equal(torch_attention.attention(q, q, q * 2), q * 2) and calls == [(1, 5, 2, 8)]
    torch_attention.attention(q, q, q, torch.ones(1, 5, dtype=torch.bool))
    torch_attention.attention(q.float(), q.float(), q.float())
    assert len(calls) == 1


def test_a_failing_flash_kernel_falls_back_to_sdpa_once_and_for_all(monkeypatch, caplog):
    calls = []

    def broken(q, k, v):
        calls.append(1)
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(torch_attention, "_flash_forward", broken)
    monkeypatch.setattr(torch_attention, "_flash_on", True)
    monkeypatch.setattr(torch_attention, "_flash_failed", False)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 6, 2, 8, dtype=torch.bfloat16) for _ in range(3))
    with caplog.at_level("WARNING", logger="ollimg.runtime.torch_attention"):
        first, second = torch_attention.attention(q, k, v), torch_attention.attention(q, k, v)
    want = softmax_attention(q, k, v).to(q.dtype)
    torch.testing.assert_close(first, want, rtol=2e-2, atol=2e-2)
    assert torch.equal(first, second) and first.is_contiguous() and calls == [1]
    assert [r.getMessage() for r in caplog.records] == [
        "FlashAttention 4 failed, PyTorch's SDPA from now on: no kernel for this GPU"]


def test_flash_is_imported_unless_the_setting_says_sdpa(monkeypatch, tmp_path):
    """With a stand-in package installed: auto imports its forward (its kernel cache under the
    directory given), sdpa leaves it alone; a setting of neither is one clear error."""
    interface = types.ModuleType("flash_attn.cute.interface")
    interface._flash_attn_fwd = lambda q, k, v: (q, None)
    for name in ("flash_attn", "flash_attn.cute"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", interface)
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", raising=False)
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", raising=False)
    monkeypatch.setattr(torch_attention, "_flash_forward", None)
    monkeypatch.setenv("OLLIMG_ATTENTION", "sdpa")
    assert not torch_attention.import_flash(str(tmp_path)) and torch_attention._flash_forward is None
    monkeypatch.setenv("OLLIMG_ATTENTION", "auto")
    assert torch_attention.import_flash(str(tmp_path)) and torch_attention._flash_forward is interface._flash_attn_fwd
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == str(tmp_path)
    monkeypatch.setattr(torch_attention, "_flash_forward", None)
    monkeypatch.setenv("OLLIMG_ATTENTION", "fa9")
    with pytest.raises(InvalidInput, match="OLLIMG_ATTENTION='fa9': use auto or sdpa"):
        torch_attention.import_flash(str(tmp_path))
