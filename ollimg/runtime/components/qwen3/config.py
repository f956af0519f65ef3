"""`text_encoder/config.json` of Qwen3 as a frozen dataclass. Imports no torch or mlx."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ollimg.errors import InvalidModel
from ollimg.runtime.components.configs import from_json


@dataclass(frozen=True)
class Qwen3Config:
    """rope_theta at the top level, or in rope_parameters in the newer form."""

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
    def from_json(cls, raw: dict[str, Any], where: str = "text_encoder/config.json") -> "Qwen3Config":
        raw = dict(raw)
        if "rope_theta" not in raw and isinstance(raw.get("rope_parameters"), dict):
            rope = raw["rope_parameters"]
            if rope.get("rope_type", "default") != "default":
                raise InvalidModel(f"{where}: rope_type {rope.get('rope_type')!r} is not supported")
            raw["rope_theta"] = rope.get("rope_theta")
        if raw.get("rope_scaling"):
            raise InvalidModel(f"{where}: rope_scaling is not supported")
        config = from_json(cls, raw, where, optional=("hidden_act", "attention_bias"))
        if config.hidden_act != "silu" or config.attention_bias:
            raise InvalidModel(f"{where}: only hidden_act silu without attention bias is supported")
        return config

    def check_outputs(self, outputs: tuple[int, ...], where: str) -> None:
        """`outputs` are hidden-state indices 0..num_hidden_layers (0: the embeddings)."""
        if not outputs or not all(0 <= k <= self.num_hidden_layers for k in outputs):
            raise InvalidModel(f"{where}: text encoder hidden states {list(outputs)} are out of range "
                               f"0..{self.num_hidden_layers}")
