"""Frozen config dataclasses read from each component's config.json (keys named as upstream has them).

A missing required key is InvalidModel. Only the scheduler takes class defaults for absent keys,
because the real `scheduler_config.json` holds just three. Imports no torch or mlx.
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
    """`transformer/config.json` of ZImageTransformer2DModel."""

    all_patch_size: tuple[int, ...]
    all_f_patch_size: tuple[int, ...]
    in_channels: int
    dim: int
    n_layers: int
    n_refiner_layers: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    qk_norm: bool
    cap_feat_dim: int
    rope_theta: float
    t_scale: float
    axes_dims: tuple[int, ...]
    axes_lens: tuple[int, ...]

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, 256)

    @property
    def ffn_dim(self) -> int:
        return int(self.dim / 3 * 8)

    @property
    def patch_size(self) -> int:
        return self.all_patch_size[0]

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "transformer/config.json") -> "TransformerConfig":
        config = _build(cls, raw, where)
        if raw.get("siglip_feat_dim") is not None:
            raise InvalidModel(f"{where}: siglip_feat_dim is set (Z-Image Omni), which ollimg does not support yet")
        if config.all_patch_size != (2,) or config.all_f_patch_size != (1,):
            raise InvalidModel(f"{where}: only patch size 2 and frame patch size 1 are supported")
        if config.head_dim * config.n_heads != config.dim or sum(config.axes_dims) != config.head_dim:
            raise InvalidModel(f"{where}: dim / n_heads must equal sum(axes_dims)")
        return config


@dataclass(frozen=True)
class TextEncoderConfig:
    """`text_encoder/config.json` of Qwen3 (rope_theta top level, or in rope_parameters in the newer form)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    vocab_size: int
    hidden_act: str = "silu"
    attention_bias: bool = False

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "text_encoder/config.json") -> "TextEncoderConfig":
        raw = dict(raw)
        if "rope_theta" not in raw and isinstance(raw.get("rope_parameters"), dict):
            rope = raw["rope_parameters"]
            if rope.get("rope_type", "default") != "default":
                raise InvalidModel(f"{where}: rope_type {rope.get('rope_type')!r} is not supported")
            raw["rope_theta"] = rope.get("rope_theta")
        if raw.get("rope_scaling"):
            raise InvalidModel(f"{where}: rope_scaling is not supported")
        config = _build(cls, raw, where, optional=("hidden_act", "attention_bias"))
        if config.hidden_act != "silu" or config.attention_bias:
            raise InvalidModel(f"{where}: only hidden_act silu without attention bias is supported")
        return config


@dataclass(frozen=True)
class VaeConfig:
    """`vae/config.json` of AutoencoderKL (only what the decoder needs)."""

    latent_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int
    scaling_factor: float
    shift_factor: float
    act_fn: str = "silu"
    mid_block_add_attention: bool = True
    use_post_quant_conv: bool = True

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "vae/config.json") -> "VaeConfig":
        raw = dict(raw)
        if raw.get("shift_factor") is None and "shift_factor" in raw:
            raw["shift_factor"] = 0.0
        config = _build(cls, raw, where, optional=("act_fn", "mid_block_add_attention", "use_post_quant_conv"))
        if config.act_fn != "silu":
            raise InvalidModel(f"{where}: act_fn {config.act_fn!r} is not supported")
        if any(c % config.norm_num_groups for c in config.block_out_channels):
            raise InvalidModel(f"{where}: norm_num_groups must divide every block_out_channels entry")
        return config

    @property
    def scale(self) -> int:
        """Pixels per latent cell."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class SchedulerConfig:
    """`scheduler/scheduler_config.json` of FlowMatchEulerDiscreteScheduler; absent keys take class defaults."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    shift_terminal: float | None = None
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    invert_sigmas: bool = False

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "scheduler/scheduler_config.json") -> "SchedulerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in raw.items() if k in names})
        unsupported = [k for k in ("use_dynamic_shifting", "shift_terminal", "use_karras_sigmas",
                                   "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas") if getattr(config, k)]
        if unsupported:
            raise InvalidModel(f"{where}: {', '.join(unsupported)} is not supported (Z-Image uses a static shift)")
        return config


@dataclass(frozen=True)
class Defaults:
    """Recommended sampling settings: the model's `ollimg.json` "defaults", else the family's."""

    steps: int = 8
    guidance: float = 0.0
    width: int = 1024
    height: int = 1024
    cfg_truncation: float = 1.0
    cfg_normalization: float = 0.0
    max_sequence_length: int = 512

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> "Defaults":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (raw or {}).items() if k in names})


@dataclass(frozen=True)
class ZImageConfig:
    """All component configs of one Z-Image model."""

    transformer: TransformerConfig
    text_encoder: TextEncoderConfig
    vae: VaeConfig
    scheduler: SchedulerConfig
    defaults: Defaults = field(default_factory=Defaults)
