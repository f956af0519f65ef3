"""Gallery routes: the images kept by `POST /api/generate` with `"gallery": true`.

`GET /api/gallery` lists them (newest first, filtered by model or prompt words, paged with
`before`), `GET /api/gallery/{id}/image` and `/thumbnail` serve their bytes (an edit's also
`/source` and `/mask`), `DELETE /api/gallery/{id}` removes one. The gallery itself
(ollimg/gallery.py) lives in app.state.
"""

from __future__ import annotations

import asyncio
import base64
import logging

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from ollimg import api
from ollimg.gallery import Entry, Gallery
from ollimg.runtime.request import GenerateRequest, GenerateResult

log = logging.getLogger(__name__)

router = APIRouter(tags=["gallery"])

ERRORS = {s: {"model": api.Error} for s in (400, 401, 403, 404, 500)}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def gallery(request: Request) -> Gallery:
    return request.app.state.gallery


async def keep(request: Request, model_name: str, model_digest: str, req: GenerateRequest,
               result: GenerateResult) -> list[str]:
    """Keeps a generation's images in the gallery; their ids (an image that could not be kept is logged)."""

    g = gallery(request)
    source = base64.b64decode(req.images[0]) if req.images else None  # an edit: its first (only) image
    mask = base64.b64decode(req.mask) if req.mask else None

    def add_all() -> list[str]:
        ids = []
        for image, seed in zip(result.images, result.seeds):
            entry = Entry(
                id="", created_at="", model=model_name, model_digest=model_digest, prompt=req.prompt,
                negative_prompt=req.negative_prompt, width=result.width, height=result.height, steps=result.steps,
                guidance=result.guidance, seed=seed, format=result.format, timings=dict(result.timings),
                strength=result.strength, source_digest=req.image_digests[0] if source is not None else None,
            )
            try:
                kept = g.add(image, entry, source, mask)
            except (OSError, ValueError) as e:
                log.warning("gallery: could not keep an image of %s: %s", model_name, e)
                continue
            if kept is not None:
                ids.append(kept.id)
        return ids

    return await asyncio.to_thread(add_all)


@router.get("/api/gallery", response_model=api.GalleryResponse, responses=ERRORS)
async def list_images(
    request: Request,
    model: str | None = Query(None, max_length=500, description="only images of this model (display name)"),
    q: str | None = Query(None, max_length=1000, description="only images whose prompt has all these words"),
    before: str | None = Query(None, max_length=64, description="only images older than this id (the next page)"),
    limit: int = Query(50, ge=1, le=500),
) -> api.GalleryResponse:
    g = gallery(request)
    entries, total = await asyncio.to_thread(g.list, model=model, text=q, before=before, limit=limit)
    return api.GalleryResponse(
        images=[_image(e) for e in entries], total=total, models=g.models(), bytes=g.total_bytes(), max_bytes=g.max_bytes,
    )


@router.get("/api/gallery/{image_id}", response_model=api.GalleryImage, responses=ERRORS)
def get_image(image_id: str, request: Request) -> api.GalleryImage:
    return _image(gallery(request).get(image_id))


@router.get("/api/gallery/{image_id}/image", response_class=FileResponse,
            responses={200: {"description": "the image as generated (png, jpeg or webp)"}, **ERRORS})
def image_bytes(image_id: str, request: Request) -> FileResponse:
    g = gallery(request)
    entry = g.get(image_id)
    filename = f"ollimg-{entry.seed}-{entry.id}.{'jpg' if entry.format == 'jpeg' else entry.format}"
    return FileResponse(g.image_path(entry), media_type=MEDIA_TYPES[entry.format], filename=filename,
                        content_disposition_type="inline")


@router.get("/api/gallery/{image_id}/thumbnail", response_class=FileResponse,
            responses={200: {"description": "a JPEG of at most 256x256"}, **ERRORS})
def thumbnail(image_id: str, request: Request) -> FileResponse:
    g = gallery(request)
    return FileResponse(g.thumb_path(g.get(image_id)), media_type="image/jpeg")


@router.get("/api/gallery/{image_id}/source", response_class=FileResponse,
            responses={200: {"description": "an edit's input image (PNG, as the model got it); 404 for images "
                                            "made from text alone"}, **ERRORS})
def source_bytes(image_id: str, request: Request) -> FileResponse:
    g = gallery(request)
    return FileResponse(g.source_path(g.get(image_id)), media_type="image/png")


@router.get("/api/gallery/{image_id}/mask", response_class=FileResponse,
            responses={200: {"description": "an edit's mask (greyscale PNG, white = redrawn); 404 when it had none"},
                       **ERRORS})
def mask_bytes(image_id: str, request: Request) -> FileResponse:
    g = gallery(request)
    return FileResponse(g.mask_path(g.get(image_id)), media_type="image/png")


@router.delete("/api/gallery/{image_id}", response_model=api.GalleryImage, responses=ERRORS)
async def delete_image(image_id: str, request: Request) -> api.GalleryImage:
    return _image(await asyncio.to_thread(gallery(request).delete, image_id))


def _image(entry: Entry) -> api.GalleryImage:
    return api.GalleryImage.model_validate(entry.__dict__)
