"""The AUTOMATIC1111 `/sdapi/v1` subset that Open WebUI, LibreChat and SillyTavern call.

`txt2img` maps prompt, negative_prompt, seed (-1 = random), steps, cfg_scale (guidance),
width/height (rounded to multiples of 16), batch_size x n_iter (at most 10 images) and
override_settings.sd_model_checkpoint; samplers, hires fix and scripts are ignored. Absent
steps/cfg_scale/size take the model's defaults (not A1111's 50 steps, CFG 7, 512x512), and so do
those stock values on a distilled model (server/defaults.py). `img2img` takes the same fields plus
init_images (the first is edited; base64, `data:` URLs allowed), denoising_strength (A1111's
default 0.75), mask (white, or opaque where it has alpha, is redrawn), mask_blur (a Gaussian blur
of the mask, in pixels), inpainting_mask_invert; absent width/height take the image's size.
Refused with a message: inpainting_fill other than 1 (original: the reference pipeline starts the
masked area from the noised original), inpaint_full_res (only-masked mode), resize_mode other than
0 (just resize). `options` holds the default model (kept across restarts); `progress` sees the
requests in flight; `interrupt` stops them, and each answers normally with what it has (no
images), as A1111 clients expect.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ollimg import api, input_images
from ollimg.calibrate import check_teacache
from ollimg.errors import Cancelled, InvalidInput
from ollimg.manifest import Model
from ollimg.runtime.images import Parameters
from ollimg.runtime.request import GenerateRequest
from ollimg.server import defaults
from ollimg.server.jobs import Job
from ollimg.server.routes.common import get_model, scheduler, store

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])
ERRORS = {s: {"model": api.Error} for s in (400, 401, 403, 404, 499, 500, 503, 507)}


class Txt2ImgRequest(api.RequestBody):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field("", max_length=api.MAX_PROMPT)
    negative_prompt: str | None = Field(None, max_length=api.MAX_PROMPT)
    seed: int = Field(-1, ge=-1, le=api.MAX_SEED, description=f"-1: random; image i uses seed + i; at most {api.MAX_SEED}")
    steps: int | None = Field(None, ge=1, le=200)
    cfg_scale: float | None = Field(None, ge=0, le=100)
    width: int | None = Field(None, ge=8, le=api.MAX_SIZE)
    height: int | None = Field(None, ge=8, le=api.MAX_SIZE)
    batch_size: int = Field(1, ge=1, le=10)
    n_iter: int = Field(1, ge=1, le=10)
    override_settings: dict = Field(default_factory=dict)
    cfg_truncation: float | None = Field(None, ge=0, description="ollimg: CFG stops above this normalised time")
    cfg_normalization: float | None = Field(None, ge=0, description="ollimg: cap on the guided norm (0: off)")


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(min_length=1, max_length=16, description="base64 images; the first is edited")
    denoising_strength: float = Field(0.75, gt=0, le=1)
    mask: str | None = Field(None, description="base64 mask: white (or opaque) is redrawn")
    mask_blur: float = Field(0, ge=0, le=64, description="Gaussian blur radius of the mask, in pixels")
    inpainting_fill: int | None = Field(None, ge=0, le=3, description="only 1 (original) is supported")
    inpaint_full_res: bool = Field(False, description="only-masked mode: not supported")
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    resize_mode: int = Field(0, ge=0, le=3, description="only 0 (just resize) is supported")


class Txt2ImgResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs, no data: prefix")
    parameters: dict
    info: str = Field(description="JSON text: prompt, seed, all_seeds, width, height, steps, cfg_scale, sd_model_name, infotexts")


class Options(api.RequestBody):
    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: str | None = Field(None, max_length=500)


class SdModel(BaseModel):
    title: str
    model_name: str
    hash: str
    sha256: str
    filename: str
    config: str | None = None


class Named(BaseModel):
    name: str


@dataclass
class _State:
    """The txt2img jobs in flight, for progress and interrupt (the default model: server/defaults.py)."""

    jobs: list[Job] = field(default_factory=list)
    interrupted: set[Job] = field(default_factory=set)  # the jobs /interrupt stopped
    step: int = 0
    steps: int = 0
    started: float = 0.0
    status: str | None = None  # the runtime's note before the first step (shown as textinfo)


def _state(request: Request) -> _State:
    if not hasattr(request.app.state, "sdapi"):
        request.app.state.sdapi = _State()
    return request.app.state.sdapi


@router.post("/txt2img", response_model=Txt2ImgResponse, responses=ERRORS)
async def txt2img(body: Txt2ImgRequest, request: Request) -> Txt2ImgResponse:
    return await _generate(body, request)


@router.post("/img2img", response_model=Txt2ImgResponse, responses=ERRORS)
async def img2img(body: Img2ImgRequest, request: Request) -> Txt2ImgResponse:
    if body.inpainting_fill not in (None, 1):
        raise InvalidInput(f"inpainting_fill {body.inpainting_fill} is not supported: only 1 (original) is, the "
                           "masked area starts from the noised original image")
    if body.inpaint_full_res:
        raise InvalidInput("inpaint_full_res (only masked) is not supported: the whole image is inpainted; send false")
    if body.resize_mode != 0:
        raise InvalidInput(f"resize_mode {body.resize_mode} is not supported: only 0 (just resize)")
    images, mask, digests = input_images.prepare(
        [input_images.from_base64(i, "init_images") for i in body.init_images],
        input_images.from_base64(body.mask, "mask") if body.mask else None,
        transparent_edits=False, blur=body.mask_blur, invert=bool(body.inpainting_mask_invert))
    return await _generate(body, request, images=images[:1], mask=mask, strength=body.denoising_strength,
                           image_digests=digests[:1])


async def _generate(body: Txt2ImgRequest, request: Request, **edit) -> Txt2ImgResponse:
    state = _state(request)
    model = _model(request, body.override_settings.get("sd_model_checkpoint"))
    n = body.batch_size * body.n_iter
    if n > 10:
        raise InvalidInput(f"batch_size x n_iter is {n}; at most 10 images per request")
    if not body.prompt:
        raise InvalidInput("prompt is empty")
    sched = scheduler(request)
    asked = defaults.without_stock(model, defaults.Settings(body.steps, body.cfg_scale, _round16(body.width),
                                                            _round16(body.height)))
    req = GenerateRequest(
        prompt=body.prompt, negative_prompt=body.negative_prompt or None, width=asked.width,
        height=asked.height, steps=asked.steps, guidance=asked.guidance,
        seed=None if body.seed < 0 else body.seed, n=n, format="png", model_name=model.name.display(),
        cfg_truncation=body.cfg_truncation, cfg_normalization=body.cfg_normalization, **edit,
        teacache=check_teacache(model, body.override_settings.get("teacache")),
    )

    def on_step(step):
        state.step, state.steps, state.status = step.step, step.total, step.status

    async def work(emit):
        state.step, state.steps, state.started, state.status = 0, req.steps or 0, time.monotonic(), None
        return await sched.generate(model, req, keep_alive=sched.keep_alive(None), on_step=on_step)

    job = Job(request, work)
    state.jobs.append(job)
    try:
        _, result = await job.until("done")
    except Cancelled:
        if job not in state.interrupted:
            raise
        return _interrupted(body, model)
    finally:
        job.close()
        state.jobs.remove(job)
        state.interrupted.discard(job)
    name = model.name.display()
    strength = body.denoising_strength if isinstance(body, Img2ImgRequest) else None
    info = {
        "prompt": body.prompt, "negative_prompt": body.negative_prompt or "", "seed": result.seeds[0],
        "all_seeds": result.seeds, "width": result.width, "height": result.height, "steps": result.steps,
        "cfg_scale": result.guidance, "sd_model_name": name, "sd_model_hash": model.digest.split(":")[-1][:10],
        "batch_size": body.batch_size, "n_iter": body.n_iter,
        "infotexts": [Parameters(body.prompt, body.negative_prompt or None, result.steps, result.guidance, seed,
                                 result.width, result.height, name, model.digest, strength=strength).text()
                      for seed in result.seeds],
    }
    return Txt2ImgResponse(
        images=[base64.b64encode(img).decode() for img in result.images],
        parameters=body.model_dump(), info=json.dumps(info),
    )


@router.get("/options", response_model=Options, responses=ERRORS)
def get_options(request: Request) -> Options:
    return Options(sd_model_checkpoint=defaults.default_model(store(request)).name.display())


@router.post("/options", responses=ERRORS)
def set_options(body: Options, request: Request) -> dict:
    if body.sd_model_checkpoint:
        defaults.save_checkpoint(_model(request, body.sd_model_checkpoint).name.display())
    return {}


@router.get("/sd-models", response_model=list[SdModel], responses=ERRORS)
def sd_models(request: Request) -> list[SdModel]:
    return [
        SdModel(title=m.name.display(), model_name=m.name.display(), hash=m.digest.split(":")[-1][:10],
                sha256=m.digest.split(":")[-1],
                filename=store(request).manifest_path(m.name).relative_to(store(request).root).as_posix())
        for m in defaults.listed_models(store(request))
    ]


@router.get("/progress", responses=ERRORS)
def progress(request: Request) -> dict:
    state = _state(request)
    busy = bool(state.jobs)
    fraction = state.step / state.steps if busy and state.steps else 0.0
    elapsed = time.monotonic() - state.started if busy else 0.0
    eta = elapsed / fraction - elapsed if fraction else 0.0
    return {
        "progress": fraction, "eta_relative": eta, "current_image": None,
        "textinfo": state.status if busy else None,
        "state": {"skipped": False, "interrupted": False, "job": "txt2img" if busy else "", "job_count": len(state.jobs),
                  "job_no": 0, "sampling_step": state.step if busy else 0, "sampling_steps": state.steps if busy else 0},
    }


@router.post("/interrupt", responses=ERRORS)
def interrupt(request: Request) -> dict:
    state = _state(request)
    for job in list(state.jobs):
        state.interrupted.add(job)
        job.close()
    return {}


def _names(*names: str):
    def route() -> list[Named]:
        return [Named(name=n) for n in names]

    return route


router.get("/samplers", response_model=list[Named])(_names("Euler"))
router.get("/schedulers", response_model=list[Named])(_names("Simple"))
router.get("/upscalers", response_model=list[Named])(_names("None"))
router.get("/latent-upscale-modes", response_model=list[Named])(_names())
router.get("/sd-vae", response_model=list[Named])(_names("Automatic"))


def _model(request: Request, name: str | None) -> Model:
    return get_model(request, name) if name else defaults.default_model(store(request))


def _round16(value: int | None) -> int | None:
    return None if value is None else api.round16_half_up(value)


def _interrupted(body: Txt2ImgRequest, model: Model) -> Txt2ImgResponse:
    """What an interrupted txt2img answers: no images, and an info that says so."""
    info = {"prompt": body.prompt, "negative_prompt": body.negative_prompt or "", "sd_model_name": model.name.display(),
            "all_seeds": [], "infotexts": [], "interrupted": True}
    return Txt2ImgResponse(images=[], parameters=body.model_dump(), info=json.dumps(info))
