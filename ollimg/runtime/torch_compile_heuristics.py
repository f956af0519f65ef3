"""One change to Inductor's code-generation heuristics, installed by torch_compile when it compiles
(imported there, lazily: it imports Inductor).

A reduction over at most one attention head (a size known when compiling, <= 256 elements) is
generated as a single pass, each row read once into registers. Inductor does that for such a
reduction only when it can see that all its reads are contiguous; the QK norm reads q and k as
strided slices of the fused q/k/v projection's output, so Inductor gave it its general two-pass
loop, which reads each head twice. Measured on the H200, a denoiser block's QK norm + RoPE
kernel: 76.5 us two-pass, 67.4 single-pass (bf16; fp8 77.7 / 71.0), about 2 ms a generation
(bench/README.md, "Single-pass reductions over a head"). The generated kernel autotunes its rows
per program either way and computes the same values, to rounding (bf16: one rounding step apart).
"""

from __future__ import annotations

from torch._inductor import config as inductor
from torch._inductor.choices import InductorChoices


class Choices(InductorChoices):
    """Inductor's choices, with single-pass reductions over a head whatever Inductor's hint."""

    single_pass_up_to = 256  # elements: a head (head sizes are 64-256)

    @classmethod
    def should_use_persistent_reduction(cls, features, cooperative_reduction: bool) -> bool:
        if InductorChoices.should_use_persistent_reduction(features, cooperative_reduction):
            return True
        if not inductor.triton.persistent_reductions or cooperative_reduction:
            return False
        try:
            size = int(features.reduction_numel)
        except TypeError:  # a dynamic size
            return False
        return size <= cls.single_pass_up_to

    def uuid(self) -> str:
        """Its part of Inductor's cache key, where torch asks for one: a change here compiles again."""
        return "ollimg-head-reductions-1"
