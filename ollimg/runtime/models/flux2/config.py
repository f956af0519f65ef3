"""FLUX.2 [klein] configs: frozen dataclasses read from each component's config.json and from
model_index.json (`is_distilled`), keys named as upstream has them.

A missing required key is InvalidModel; the scheduler alone takes class defaults for absent keys
(FlowMatchEulerDiscreteScheduler's). Imports no torch or mlx.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ollimg.errors import InvalidModel


def _build(cls, raw: dict[str, Any], where: str, optional: tuple[str, ...] = ()):
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            value = raw[f.name]
            values[f.name] = tuple(value) if isinstance(value, list) else value
        elif f.name not in optional:
            raise InvalidModel(f"{where}: required key {f.name!r} is missing")
    return cls(**values)


@dataclass(frozen=True)
class TransformerConfig:
    """`transformer/config.json` of Flux2Transformer2DModel."""

    patch_size: int
    in_channels: int
    num_layers: int
    num_single_layers: int
    attention_head_dim: int
    num_attention_heads: int
    joint_attention_dim: int
    timestep_guidance_channels: int
    mlp_ratio: float
    axes_dims_rope: tuple[int, ...]
    rope_theta: float
    eps: float
    guidance_embeds: bool
    out_channels: int | None = None

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def channels_out(self) -> int:
        return self.out_channels or self.in_channels

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "transformer/config.json") -> "TransformerConfig":
        config = _build(cls, raw, where, optional=("out_channels",))
        if config.patch_size != 1:
            raise InvalidModel(f"{where}: only patch_size 1 is supported (FLUX.2 packs 2x2 in the VAE)")
        if config.guidance_embeds:
            raise InvalidModel(f"{where}: guidance_embeds is set (FLUX.2 [dev]); ollimg runs FLUX.2 [klein]")
        if config.channels_out != config.in_channels:
            raise InvalidModel(f"{where}: out_channels must equal in_channels")
        if sum(config.axes_dims_rope) != config.attention_head_dim or len(config.axes_dims_rope) != 4:
            raise InvalidModel(f"{where}: axes_dims_rope must be 4 axes summing to attention_head_dim")
        return config


@dataclass(frozen=True)
class VaeConfig:
    """`vae/config.json` of AutoencoderKLFlux2."""

    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int
    norm_num_groups: int
    batch_norm_eps: float
    patch_size: tuple[int, ...]
    act_fn: str = "silu"
    decoder_block_out_channels: tuple[int, ...] | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "vae/config.json") -> "VaeConfig":
        config = _build(cls, raw, where, optional=("act_fn", "decoder_block_out_channels", "use_quant_conv",
                                                   "use_post_quant_conv", "mid_block_add_attention"))
        if config.act_fn != "silu":
            raise InvalidModel(f"{where}: act_fn {config.act_fn!r} is not supported")
        if config.patch_size != (2, 2):
            raise InvalidModel(f"{where}: only patch_size [2, 2] is supported")
        if config.decoder_block_out_channels not in (None, config.block_out_channels):
            raise InvalidModel(f"{where}: decoder_block_out_channels other than block_out_channels is not supported")
        if any(c % config.norm_num_groups for c in config.block_out_channels):
            raise InvalidModel(f"{where}: norm_num_groups must divide every block_out_channels entry")
        return config

    @property
    def scale(self) -> int:
        """Pixels per latent cell (before the 2x2 patching)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def packed_channels(self) -> int:
        """Channels of a 2x2-patchified latent: what the BatchNorm and the transformer see."""
        return self.latent_channels * self.patch_size[0] * self.patch_size[1]


@dataclass(frozen=True)
class SchedulerConfig:
    """`scheduler/scheduler_config.json` of FlowMatchEulerDiscreteScheduler; absent keys take class defaults.

    klein shifts dynamically with an exponential time shift; its `mu` is computed from the image size
    and step count (`flow_match` / the pipeline), so base_shift / max_shift go unused, as in diffusers.
    """

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"
    shift_terminal: float | None = None
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    invert_sigmas: bool = False
    stochastic_sampling: bool = False

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "scheduler/scheduler_config.json") -> "SchedulerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in raw.items() if k in names})
        unsupported = [k for k in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                                   "invert_sigmas", "stochastic_sampling") if getattr(config, k)]
        if config.use_dynamic_shifting and config.time_shift_type != "exponential":
            unsupported.append(f"time_shift_type {config.time_shift_type!r}")
        if unsupported:
            raise InvalidModel(f"{where}: {', '.join(unsupported)} is not supported")
        return config


@dataclass(frozen=True)
class Defaults:
    """Recommended sampling settings: the model's `ollimg.json` "defaults", else the variant's own
    (`for_variant`): distilled 4 steps with guidance off, base 50 steps with guidance 4."""

    steps: int = 4
    guidance: float = 1.0
    width: int = 1024
    height: int = 1024
    max_sequence_length: int = 512
    text_encoder_out_layers: tuple[int, ...] = (9, 18, 27)

    @classmethod
    def for_variant(cls, distilled: bool, raw: dict[str, Any] | None = None) -> "Defaults":
        base = cls() if distilled else cls(steps=50, guidance=4.0)
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in (raw or {}).items() if k in names}
        return dataclasses.replace(base, **given)


@dataclass(frozen=True)
class Flux2Config:
    """All component configs of one FLUX.2 [klein] model. `text_encoder` is the shared Qwen3 config."""

    transformer: TransformerConfig
    text_encoder: Any
    vae: VaeConfig
    scheduler: SchedulerConfig
    is_distilled: bool
    defaults: Defaults = field(default_factory=Defaults)
