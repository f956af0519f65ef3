"""FLUX.2 [klein]'s configs: the transformer's config.json and what AutoencoderKLFlux2 adds to the
VAE's as frozen dataclasses (keys named as upstream has them; a missing required key is
InvalidModel), the shared components' configs, `is_distilled` from model_index.json, the
variant's recommended defaults, and `read_config` of a ModelSource. Imports no torch or mlx.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ollimg.errors import InvalidModel
from ollimg.runtime.components.autoencoder_kl.config import AutoencoderKLConfig
from ollimg.runtime.components.configs import from_json
from ollimg.runtime.components.qwen3.config import Qwen3Config
from ollimg.runtime.flow_match import FlowMatchConfig


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
        config = from_json(cls, raw, where, optional=("out_channels",))
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
class LatentNormConfig:
    """What `vae/config.json` of AutoencoderKLFlux2 adds to AutoencoderKL's: the 2x2 patch and the
    BatchNorm over the patchified latents."""

    batch_norm_eps: float
    patch_size: tuple[int, ...]

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "vae/config.json") -> "LatentNormConfig":
        config = from_json(cls, raw, where)
        if config.patch_size != (2, 2):
            raise InvalidModel(f"{where}: only patch_size [2, 2] is supported")
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
    """All component configs of one FLUX.2 [klein] model; `is_distilled` is model_index.json's."""

    transformer: TransformerConfig
    text_encoder: Qwen3Config
    vae: AutoencoderKLConfig
    latent_norm: LatentNormConfig
    scheduler: FlowMatchConfig
    is_distilled: bool
    defaults: Defaults = field(default_factory=Defaults)

    @property
    def text_encoder_outputs(self) -> tuple[int, ...]:
        """klein conditions on Qwen3's hidden_states[k] for k in text_encoder_out_layers, concatenated per token."""
        return tuple(self.defaults.text_encoder_out_layers)

    @property
    def multiple(self) -> int:
        """Pixels per packed latent cell: the VAE's factor times the 2x2 patch."""
        return self.vae.scale * self.latent_norm.patch_size[0]


def read_config(source) -> Flux2Config:
    """The Flux2Config of a ModelSource; defaults from the store config or the directory's ollimg.json."""
    where = f"model {source.name}"
    index = source.json("model_index.json")
    distilled = index.get("is_distilled", False)  # diffusers' default: an undistilled model
    if not isinstance(distilled, bool):
        raise InvalidModel(f"{where}: model_index.json: is_distilled must be true or false")
    raw_vae = source.json("vae/config.json")
    vae = AutoencoderKLConfig.from_json(raw_vae)
    if len(vae.decoder_channels) != len(vae.block_out_channels):
        raise InvalidModel(f"{where}: vae/config.json: the encoder and decoder must scale alike")
    scheduler = FlowMatchConfig.from_json(source.json("scheduler/scheduler_config.json"))
    if not scheduler.use_dynamic_shifting or scheduler.time_shift_type != "exponential":
        raise InvalidModel(f"{where}: scheduler/scheduler_config.json: klein shifts dynamically and exponentially "
                           "(use_dynamic_shifting true, time_shift_type exponential)")
    config = Flux2Config(
        transformer=TransformerConfig.from_json(source.json("transformer/config.json")),
        text_encoder=Qwen3Config.from_json(source.json("text_encoder/config.json")),
        vae=vae,
        latent_norm=LatentNormConfig.from_json(raw_vae),
        scheduler=scheduler,
        is_distilled=distilled,
        defaults=Defaults.for_variant(distilled, source.defaults()),
    )
    config.text_encoder.check_outputs(config.text_encoder_outputs, f"{where}: text_encoder_out_layers")
    width = len(config.text_encoder_outputs) * config.text_encoder.hidden_size
    if width != config.transformer.joint_attention_dim:
        raise InvalidModel(f"{where}: transformer joint_attention_dim {config.transformer.joint_attention_dim} is not "
                           f"{len(config.text_encoder_outputs)} text-encoder layers of {config.text_encoder.hidden_size}")
    if config.transformer.in_channels != 4 * vae.latent_channels:
        raise InvalidModel(f"{where}: transformer in_channels must be 4 times the VAE's latent_channels")
    return config
