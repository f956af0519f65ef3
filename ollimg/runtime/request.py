"""What a runtime is asked and what it answers: GenerateRequest and GenerateResult.

Plain dataclasses that travel as JSON between the server and the runtime subprocess, and the
limits both sides check (MAX_IMAGES, MAX_SEED: the one seed ceiling the API states too). Imports no
torch or mlx (the server imports this).
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields

MAX_IMAGES = 16  # images one request may make
# Image i uses seed + i; every image's seed stays at most 2^53 - 1, the largest whole number that
# every JSON reader (JavaScript's included, and the OpenAPI document's float bounds) holds exactly.
MAX_SEED = 2**53 - MAX_IMAGES


@dataclass
class GenerateRequest:
    """width/height/steps/guidance None means the model's defaults; image i uses seed + i;
    teacache: a TeaCache threshold (None: off)."""

    prompt: str
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    n: int = 1
    format: str = "png"
    compression: int | None = None
    previews: int = 0
    model_name: str | None = None
    images: list[str] = field(default_factory=list)  # base64 PNGs to start from (`ollimg.input_images.source`)
    mask: str | None = None  # base64 greyscale PNG, white = redraw (`ollimg.input_images.mask`)
    strength: float | None = None  # None: the model's default for edits
    image_digests: list[str] = field(default_factory=list)  # sha256 of each uploaded image, for the metadata
    cfg_truncation: float | None = None  # None: the model's (CFG off above this normalised time)
    cfg_normalization: float | None = None  # None: the model's (cap on the guided norm; 0 off)
    teacache: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "GenerateRequest":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class GenerateResult:
    images: list[bytes]  # encoded in the request's format
    seeds: list[int]
    width: int
    height: int
    steps: int
    guidance: float
    format: str = "png"
    timings: dict[str, float] = field(default_factory=dict)
    strength: float | None = None  # an edit's strength, as used (None: text to image)

    def to_json(self) -> dict:
        data = asdict(self)
        data["images"] = [base64.b64encode(i).decode("ascii") for i in self.images]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "GenerateResult":
        data = dict(data)
        data["images"] = [base64.b64decode(i) for i in data["images"]]
        return cls(**data)
