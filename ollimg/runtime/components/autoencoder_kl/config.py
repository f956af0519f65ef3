"""`vae/config.json` of AutoencoderKL (and of its variants with the same decoder) as a frozen dataclass.

What the decoder needs, and the encoder (`in_channels`, `use_quant_conv`). Imports no torch or mlx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ollimg.errors import InvalidModel
from ollimg.runtime.components.configs import from_json


@dataclass(frozen=True)
class AutoencoderKLConfig:
    latent_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int
    act_fn: str = "silu"
    mid_block_add_attention: bool = True
    use_post_quant_conv: bool = True
    decoder_block_out_channels: tuple[int, ...] | None = None
    in_channels: int = 3
    use_quant_conv: bool = True
    scaling_factor: float | None = None  # the family decides whether it needs them
    shift_factor: float | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "vae/config.json") -> "AutoencoderKLConfig":
        config = from_json(cls, raw, where, optional=("act_fn", "mid_block_add_attention", "use_post_quant_conv",
                                                      "decoder_block_out_channels", "scaling_factor", "shift_factor",
                                                      "in_channels", "use_quant_conv"))
        if config.act_fn != "silu":
            raise InvalidModel(f"{where}: act_fn {config.act_fn!r} is not supported")
        if any(c % config.norm_num_groups for c in config.decoder_channels):
            raise InvalidModel(f"{where}: norm_num_groups must divide every block_out_channels entry")
        return config

    @property
    def decoder_channels(self) -> tuple[int, ...]:
        return self.decoder_block_out_channels or self.block_out_channels

    @property
    def scale(self) -> int:
        """Pixels per latent cell."""
        return 2 ** (len(self.decoder_channels) - 1)
