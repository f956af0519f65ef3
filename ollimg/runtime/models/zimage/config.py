"""Z-Image's configs: the transformer's config.json as a frozen dataclass (keys named as upstream
has them; a missing required key is InvalidModel), the shared components' configs, the model's
recommended defaults, and `read_config` of a ModelSource. Imports no torch or mlx.
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
        config = from_json(cls, raw, where)
        if raw.get("siglip_feat_dim") is not None:
            raise InvalidModel(f"{where}: siglip_feat_dim is set (Z-Image Omni), which ollimg does not support yet")
        if config.all_patch_size != (2,) or config.all_f_patch_size != (1,):
            raise InvalidModel(f"{where}: only patch size 2 and frame patch size 1 are supported")
        if config.head_dim * config.n_heads != config.dim or sum(config.axes_dims) != config.head_dim:
            raise InvalidModel(f"{where}: dim / n_heads must equal sum(axes_dims)")
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
    text_encoder: Qwen3Config
    vae: AutoencoderKLConfig
    scheduler: FlowMatchConfig
    defaults: Defaults = field(default_factory=Defaults)

    @property
    def text_encoder_outputs(self) -> tuple[int, ...]:
        """Z-Image conditions on hidden_states[-2]: the output of the last layer but one."""
        return (self.text_encoder.num_hidden_layers - 1,)


def read_config(source) -> ZImageConfig:
    """The ZImageConfig of a ModelSource; defaults from the store config or the directory's ollimg.json."""
    where = f"model {source.name}"
    raw_vae = dict(source.json("vae/config.json"))
    for key in ("scaling_factor", "shift_factor"):
        if key not in raw_vae:
            raise InvalidModel(f"{where}: vae/config.json: required key {key!r} is missing")
    if raw_vae["shift_factor"] is None:
        raw_vae["shift_factor"] = 0.0
    scheduler = FlowMatchConfig.from_json(source.json("scheduler/scheduler_config.json"))
    if scheduler.use_dynamic_shifting:
        raise InvalidModel(f"{where}: scheduler/scheduler_config.json: use_dynamic_shifting is not supported "
                           "(Z-Image uses a static shift)")
    return ZImageConfig(
        transformer=TransformerConfig.from_json(source.json("transformer/config.json")),
        text_encoder=Qwen3Config.from_json(source.json("text_encoder/config.json")),
        vae=AutoencoderKLConfig.from_json(raw_vae),
        scheduler=scheduler,
        defaults=Defaults.from_json(source.defaults()),
    )
