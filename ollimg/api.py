"""The wire models of the HTTP API (pydantic), written once for the server and the client.

Native API (`/api/*`, ollama-like, NDJSON streams) and the OpenAI-compatible images API (`/v1/*`).
Field constraints here are the validation the server applies and what its OpenAPI document says.
Every request body is a `RequestBody`: JSON `true`/`false` is no number there and NaN/Infinity
are refused, with a 400 that names the field. Imports pydantic, errors, config (the one duration
parser) and the runtime's request limits (the one seed ceiling).
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ollimg import config
from ollimg.errors import InvalidInput
from ollimg.runtime.request import MAX_SEED

MAX_PROMPT = 32000
MIN_SIZE, MAX_SIZE = 16, 4096
Format = Literal["png", "jpeg", "webp"]

_SEED_HELP = (f"default: random; image i uses seed + i; 0 to {MAX_SEED} (2^53 - 16: every image's seed is a whole "
              "number that any JSON reader, JavaScript's too, holds exactly)")
_KEEP_ALIVE_HELP = "how long the model stays loaded: seconds or a duration like 5m; 0 unloads after the request, negative keeps it"


def _duration(value: Any) -> Any:
    """keep_alive as sent, once the one duration parser has accepted it (no bool, NaN or Infinity)."""
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("use a number of seconds or a duration like 5m")
    try:
        config.parse_duration(value)
    except InvalidInput as e:
        raise ValueError(e.message) from None
    return value


KeepAlive = Annotated[str | float | None, BeforeValidator(_duration)]


def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or annotation is Any or any(_takes_bool(a) for a in typing.get_args(annotation))


class RequestBody(BaseModel):
    """A request's JSON: pydantic's lax mode would read `true` as 1 and take NaN and Infinity as
    floats; here a boolean is refused wherever a field does not take one, and so is a float that is
    not finite."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and not _takes_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true or false")
        return value


class Error(BaseModel):
    """Native error body: `error` is the message, `code` the machine code the client rebuilds the exception from."""

    error: str
    code: str = "error"
    param: str | None = Field(None, description="the request field at fault, when one is")


# -- native: generate ---------------------------------------------------------------------------


_TEACACHE_HELP = "TeaCache threshold (default: off); the model must be calibrated (ollimg calibrate)"


class GenerateRequest(RequestBody):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=500)
    prompt: str = Field("", max_length=MAX_PROMPT, description="empty: only load the model (or unload it with keep_alive 0)")
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT)
    width: int | None = Field(None, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=16, description="default: the model's")
    height: int | None = Field(None, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=16, description="default: the model's")
    steps: int | None = Field(None, ge=1, le=200, description="default: the model's")
    guidance: float | None = Field(None, ge=0, le=100, description="default: the model's")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description=_SEED_HELP)
    n: int = Field(1, ge=1, le=10)
    format: Format = "png"
    compression: int | None = Field(None, ge=0, le=100, description="jpeg/webp quality")
    keep_alive: KeepAlive = Field(None, description=_KEEP_ALIVE_HELP)
    stream: bool = True
    images: list[str] | None = Field(None, max_length=16, description="base64 images to start from (edits)")
    mask: str | None = Field(None, description="base64 mask of the first image's size: white (or transparent) is redrawn")
    strength: float | None = Field(None, gt=0, le=1, description="how much of the image is redrawn; default: the model's")
    cfg_truncation: float | None = Field(None, ge=0, description="CFG stops above this normalised time (over 1: never)")
    cfg_normalization: float | None = Field(None, ge=0, description="cap on the guided prediction's norm (0: off)")
    teacache: float | None = Field(None, ge=0, le=100, description=_TEACACHE_HELP)
    previews: int = Field(0, ge=0, le=50, description="with stream: this many GeneratePreview lines (PNGs of the "
                                                       "image forming) at evenly spaced steps")
    gallery: bool = Field(False, description="keep the images in the server's gallery (GET /api/gallery)")
    options: dict[str, Any] | None = Field(
        None, description="ollama's spelling: seed, steps, width, height, guidance, negative_prompt, n here "
                          "count when the top-level field is absent")

    @model_validator(mode="before")
    @classmethod
    def _merge_options(cls, data: Any) -> Any:
        """ollama clients send settings as `options` (`generate(options={"seed": 42})`)."""
        if isinstance(data, dict) and isinstance(data.get("options"), dict):
            merged = {k: v for k, v in data["options"].items() if k in _OPTION_FIELDS and v is not None}
            data = {**merged, **{k: v for k, v in data.items() if v is not None}}
        if isinstance(data, dict) and data.get("format") in ("", None):
            data = {k: v for k, v in data.items() if k != "format"}  # ollama's "no JSON mode"
        return data


_OPTION_FIELDS = ("seed", "steps", "width", "height", "guidance", "negative_prompt", "n")


class GenerateStep(BaseModel):
    """One NDJSON progress line of a streamed generate: a finished denoising step (`completed` of
    `total` is the same count under the names the ollama client reads)."""

    model: str
    created_at: str = ""
    step: int
    completed: int = 0
    total: int
    elapsed: float = 0.0
    status: str | None = None
    """only on step 0, before the first step when that takes long (e.g. "optimizing for this GPU, once")"""
    done: Literal[False] = False


class GeneratePreview(BaseModel):
    """One NDJSON line of a streamed generate with `previews`: one image of the batch so far, as a
    base64 PNG. With `n` > 1 each preview comes once per image, in image order."""

    model: str
    preview: str = Field(description="base64 PNG at the requested size")
    index: int = Field(description="0-based number of this preview (of this image)")
    image_index: int = Field(0, description="0-based image of the batch it shows (image i uses seed + i)")
    step: int | None = Field(None, description="the denoising step it shows")
    done: Literal[False] = False


class GenerateResponse(BaseModel):
    """The last line of a generate stream (or the whole answer without streaming)."""

    model: str
    created_at: str
    images: list[str] = Field(default_factory=list, description="base64 of the encoded images")
    image: str | None = Field(None, description="the first of `images` (what the ollama client reads)")
    format: Format = "png"
    seed: int | None = None
    seeds: list[int] = Field(default_factory=list)
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = Field(None, description="an edit's strength, as used (the model's default if not asked)")
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")
    load_duration: int = Field(0, description="nanoseconds spent loading the model")
    total_duration: int = Field(0, description="nanoseconds for the whole request")
    done: Literal[True] = True
    done_reason: Literal["stop", "load", "unload"] = "stop"
    gallery_ids: list[str] = Field(default_factory=list, description="with gallery: the kept images' ids, in order")


# -- native: models -----------------------------------------------------------------------------


class ModelDetails(BaseModel):
    format: str = "safetensors"
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""


class ModelInfo(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails
    capabilities: list[str] = Field(default_factory=lambda: ["image"])


class TagsResponse(BaseModel):
    models: list[ModelInfo]


class RunningModel(BaseModel):
    name: str
    model: str
    size: int = Field(description="bytes the loaded model holds")
    digest: str
    details: ModelDetails
    expires_at: str | None = Field(description="null: stays loaded until stopped")
    size_vram: int
    processor: str = Field(description="CPU, CUDA or MLX")
    busy: bool = Field(False, description="a generation is running")
    waiting: int = Field(0, description="requests queued for this model")
    pid: int | None = Field(None, description="the runtime process")


class PsResponse(BaseModel):
    models: list[RunningModel]


class ModelRequest(RequestBody):
    """A request naming one model (`name` is accepted as ollama's older spelling)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, min_length=1, max_length=500)
    name: str | None = Field(None, min_length=1, max_length=500)

    def model_name(self) -> str | None:
        return self.model or self.name


class ShowRequest(ModelRequest):
    verbose: bool = False


class ShowResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    digest: str
    size: int
    modified_at: str
    details: ModelDetails
    capabilities: list[str]
    parameters: str = Field("", description='generation defaults in ollama\'s text form ("steps 8\\nguidance 0")')
    license: str = ""
    description: str = ""
    model_info: dict[str, Any] = Field(default_factory=dict, description="the config blob")
    tensors: int = 0
    files: list[str] = Field(default_factory=list)
    info: dict[str, Any] = Field(default_factory=dict, description="what `ollimg show` prints (ollimg.models.info)")


class CreateRequest(ModelRequest):
    from_: str = Field(alias="from", min_length=1, max_length=4096, description="a model directory or Hugging Face repo on the server's machine")
    quantize: Literal["fp8"] | None = None
    dtype: Literal["bf16"] | None = None
    stream: bool = True

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class PullRequest(ModelRequest):
    insecure: bool | None = Field(None, description="true: plain HTTP; false or absent: automatic (plain HTTP only "
                                                    "for loopback registries, which is what ollama's client means by false)")
    stream: bool = True


class PushRequest(PullRequest):
    pass


class DeleteResponse(BaseModel):
    deleted: list[str] = Field(description="display names removed")
    blobs: int = Field(description="blobs no other model used, now removed")
    bytes: int = Field(description="disk space freed, in bytes (the blocks the blobs held)")


class CopyRequest(RequestBody):
    source: str = Field(min_length=1, max_length=500)
    destination: str = Field(min_length=1, max_length=500)


class ProgressResponse(BaseModel):
    """One NDJSON line of create, pull and push: `status`, and bytes `completed` of `total`.

    The last line is `{"status": "success"}`; after create and pull it also carries the model's
    `digest`, `new_bytes` and `deduplicated_bytes`."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
    new_bytes: int | None = None
    deduplicated_bytes: int | None = None


class SaveRequest(RequestBody):
    """`POST /api/save`: the answer is the archive itself, an OCI image layout in a tar."""

    models: list[str] = Field(min_length=1, max_length=1000, description="the models to save")
    format: Literal["tar.zst", "tar"] = Field("tar.zst", description="tar.zst (zstd) or a plain tar, which has a Content-Length")
    level: int | None = Field(None, ge=1, le=22, description="zstd level (default 3; above 19 uses much more memory)")


class LoadResponse(BaseModel):
    """`POST /api/load` (body: a .tar or .tar.zst archive): the models it loaded. With `stream`
    (the default) the last NDJSON line, after ProgressResponse lines (`loading <12hex>` and
    `skipping <12hex>` with bytes, `writing manifest`); with `stream=false` the whole answer."""

    status: Literal["success"] = "success"
    models: list[str] = Field(description="display names, in the archive's order")
    new_bytes: int = Field(description="blob bytes added to the store")
    deduplicated_bytes: int = Field(description="blob bytes the store already had")


class VersionResponse(BaseModel):
    version: str


class BuiltinModel(BaseModel):
    name: str
    description: str = ""
    stored: bool = Field(description="already in the store; otherwise imported on first use")


class BuiltinResponse(BaseModel):
    """Models shipped with ollimg: usable by name even before they are in the store."""

    models: list[BuiltinModel]


# -- native: gallery ----------------------------------------------------------------------------


class GalleryImage(BaseModel):
    """A kept image and what made it; its bytes are at /api/gallery/{id}/image and /thumbnail."""

    id: str
    created_at: str
    model: str
    model_digest: str | None = None
    prompt: str
    negative_prompt: str | None = None
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    format: Format
    bytes: int = Field(description="bytes of the image, its thumbnail and an edit's source image and mask")
    timings: dict[str, float] = Field(default_factory=dict)
    strength: float | None = Field(None, description="an edit's strength; absent for images made from text alone")
    source_digest: str | None = Field(None, description="an edit's: sha256 of the uploaded image; its PNG is at "
                                                        "/api/gallery/{id}/source")
    mask: bool = Field(False, description="the edit had a mask, at /api/gallery/{id}/mask (white = redrawn)")


class GalleryResponse(BaseModel):
    images: list[GalleryImage] = Field(description="newest first")
    total: int = Field(description="images that match the filters")
    models: list[str] = Field(description="every model in the gallery, for a filter")
    bytes: int = Field(description="bytes the gallery holds")
    max_bytes: int = Field(description="its cap (OLLIMG_GALLERY_MAX); the oldest images go first")


# -- OpenAI-compatible images API ---------------------------------------------------------------


class ImageGenerationRequest(RequestBody):
    """OpenAI's `POST /v1/images/generations`, plus the extras `seed`, `steps`, `negative_prompt`, `guidance_scale`."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT)
    model: str | None = Field(None, max_length=500, description="default: the only loaded or stored model")
    n: int | None = Field(1, ge=1, le=10)
    size: str | None = Field("auto", max_length=32, description="auto or WxH, multiples of 16 from 16 to 4096")
    response_format: Literal["b64_json", "url"] | None = Field(None, description="only b64_json is served; url is refused")
    output_format: Format | None = "png"
    output_compression: int | None = Field(None, ge=0, le=100)
    quality: str | None = Field(None, max_length=32, description="accepted, ignored")
    background: Literal["auto", "transparent", "opaque"] | None = Field(None, description="transparent is refused")
    moderation: str | None = Field(None, max_length=32)
    style: str | None = Field(None, max_length=32)
    user: str | None = Field(None, max_length=500)
    stream: bool | None = False
    partial_images: int | None = Field(0, ge=0, le=3)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description=_SEED_HELP)
    steps: int | None = Field(None, ge=1, le=200)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT)
    guidance_scale: float | None = Field(None, ge=0, le=100)
    keep_alive: KeepAlive = Field(None, description=_KEEP_ALIVE_HELP)
    progress: bool | None = Field(False, description="with stream: also send an `event: progress` per step")
    cfg_truncation: float | None = Field(None, ge=0, description="CFG stops above this normalised time (over 1: never)")
    cfg_normalization: float | None = Field(None, ge=0, description="cap on the guided prediction's norm (0: off)")
    teacache: float | None = Field(None, ge=0, le=100, description=_TEACACHE_HELP)


class ImageEditRequest(ImageGenerationRequest):
    """The non-file fields of OpenAI's multipart `POST /v1/images/edits`, plus `strength`."""

    strength: float | None = Field(None, gt=0, le=1, description="how much of the image is redrawn; default: the model's")
    input_fidelity: str | None = Field(None, max_length=32, description="accepted, ignored")


class ImageData(BaseModel):
    b64_json: str
    seed: int | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: Format
    size: str
    quality: str = "auto"
    background: str = "opaque"


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ollimg"


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


def parse_size(size: str | None, round16: bool = False) -> tuple[int | None, int | None]:
    """`auto` (None, None: the model's default) or `WxH` with multiples of 16 from 16 to 4096;
    `round16` rounds other sizes to the nearest multiple of 16 (what frontends' free-form sizes need)."""
    if size is None or size.strip().lower() == "auto":
        return None, None
    match = re.fullmatch(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*", size)
    if not match:
        raise _bad_size(f"Invalid size {size!r}: use WxH (such as 1024x1024) or auto.")
    width, height = int(match.group(1)), int(match.group(2))
    if round16:
        width, height = round16_half_up(width), round16_half_up(height)
    if width % 16 or height % 16:
        raise _bad_size(f"Invalid size {size!r}: width and height must be multiples of 16.")
    if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
        raise _bad_size(f"Invalid size {size!r}: width and height must be from {MIN_SIZE} to {MAX_SIZE}.")
    return width, height


def round16_half_up(value: int) -> int:
    """The nearest multiple of 16, halves up (100 -> 96, 104 -> 112), at least 16."""
    return max(MIN_SIZE, int(value / 16 + 0.5) * 16)


def _bad_size(message: str) -> InvalidInput:
    e = InvalidInput(message)
    e.param = "size"
    return e
