"""The FLUX.2 [klein] pipeline: prompts through the chat template (no thinking) and Qwen3 (the
hidden states of `text_encoder_out_layers`, concatenated per token, every padded position kept),
reference images through the VAE encoder and the latent BatchNorm into reference tokens, klein's
schedule (exponential time shift by the empirical mu), its classifier-free guidance, the decode.

Matches diffusers 0.42.1 Flux2KleinPipeline. The loop itself is the shared Euler loop
(`ollimg/runtime/pipeline.py`); this module gives it the velocity. Backend-neutral: numpy plus
backend arrays touched only with arithmetic operators and the Backend protocol. Imports no torch
or mlx.

Differences from Z-Image that matter: latents are 2x2-patchified and normalised (`C = 4 x
latent_channels` channels at 1/16 of the image size) and the noise is drawn in that space; the
transformer gets t = sigma and its output is the velocity itself; CFG is `neg + g * (pos - neg)`,
only when g > 1 and only for undistilled models (a distilled model ignores guidance, as diffusers
does); reference images add tokens at their own position ids.

With a mask or a strength, `generate` is diffusers' Flux2KleinInpaintPipeline: the first image is
redrawn (its latents noised to the first sigma of the steps `strength` keeps, and, outside the
mask, put back after each step), and it is also the first reference; the other images are its
`image_reference`s. A strength without a mask redraws the whole image (the pipeline with a white
mask: img2img).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ollimg.errors import InvalidInput
from ollimg.runtime import img2img
from ollimg.runtime import pipeline as shared
from ollimg.runtime import teacache as step_cache
from ollimg.runtime.flow_match import schedule
from ollimg.runtime.models.flux2 import layout
from ollimg.runtime.models.flux2.config import Flux2Config
from ollimg.runtime.noise import noise
from ollimg.runtime.tokenizer import PromptTokenizer

log = logging.getLogger(__name__)

MAX_REFERENCES = 8
INPAINT_STRENGTH = 0.8  # Flux2KleinInpaintPipeline's default


@dataclass
class Inpaint:
    """The checked inpainting inputs: the image to redraw (shrunk to klein's area), its mask or None
    (redraw all of it), the strength."""

    image: Any
    mask: Any
    strength: float


@dataclass
class Components:
    """What a backend's `build.py` makes of the weights (arrays are that backend's)."""

    encode_text: Callable[[list[np.ndarray], int, int], Any]
    """token ids of each prompt (unpadded, int64), the padded length, the pad id -> features
    [B, length, joint_attention_dim] in the compute dtype"""
    encode_image: Callable[[np.ndarray], Any]
    """pixels float32 [3, H, W] in [-1, 1] -> the normalised latent's packed tokens [H/16 * W/16, C]"""
    prepare: Callable[..., Any]
    """(text features [B, L, D], reference tokens [Lr, C] or None, their grids, h, w) -> the
    transformer's per-generation context"""
    transformer: Callable[..., Any]
    """x float32 [B, C, h, w], t float32 [B] (`model_time`), a context, a TeaCache StepCache or None
    -> float32 [B, C, h, w] velocity"""
    decode: Callable[[Any], np.ndarray]
    """the final float32 latents [B, C, h, w] -> uint8 [B, 16h, 16w, 3] pixels (denormalised by the
    BatchNorm statistics, unpatchified, decoded in the compute dtype)"""
    modules: dict = field(default_factory=dict)


def model_time(sigma: np.float32) -> np.float32:
    """What the transformer gets: diffusers' timestep (sigma * 1000 in float32) divided by 1000."""
    return np.float32(np.float32(sigma) * np.float32(1000)) / np.float32(1000)


class Flux2Pipeline:
    """A loaded FLUX.2 [klein] model. `generate` is the one entry point; not thread-safe (one at a time)."""

    def __init__(self, name: str, digest: str | None, config: Flux2Config, tokenizer: PromptTokenizer,
                 backend: Any, components: Components):
        self.name, self.digest, self.config = name, digest, config
        self.tokenizer, self.backend, self.components = tokenizer, backend, components
        self.load_seconds = 0.0
        self.calibration: step_cache.Calibration | None = None  # set by `ollimg.runtime.load`

    @property
    def defaults(self):
        return self.config.defaults

    @property
    def multiple(self) -> int:
        return self.config.multiple

    def generate(self, prompt: str | list[str], *, negative_prompt: str | list[str] | None = None,
                 width: int | None = None, height: int | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int | None = None, n: int = 1,
                 latents: np.ndarray | None = None, images: list | None = None, mask: Any = None,
                 strength: float | None = None, on_step: shared.OnStep | None = None,
                 max_sequence_length: int | None = None, previews: int = 0,
                 on_preview: shared.OnPreview | None = None, teacache: float | None = None,
                 teacache_record: bool = False) -> shared.Result:
        """Images for `prompt` (a list gives a batch; each prompt makes `n` images, in prompt order),
        conditioned on the reference `images` (PIL images) when given; with references and no
        size, the size of the first reference (as diffusers).

        `mask` (PIL, the first image's size, white redraws) or `strength` (in (0, 1], default 0.8):
        inpaint the first image (Flux2KleinInpaintPipeline; see the module docstring); the output
        size defaults to the image's, shrunk to 1024x1024 pixels of area and rounded down to
        multiples of 16.

        `latents`: float32 [n, C, height/16, width/16] (the normalised, patchified latent space)
        instead of the seeded noise. `teacache`: a TeaCache threshold (None: off; the model must be
        calibrated); `teacache_record`: run every step and record TeaCache's calibration trace in
        `Result.cache`."""
        d = self.defaults
        inpaint, images = self._inpaint(images, mask, strength, latents)
        references = self._reference_pixels(images, 1 if inpaint else 0)
        if inpaint is not None:
            width, height = img2img.output_size(inpaint.image, width, height, self.multiple)
        elif references and width is None and height is None:
            height, width = references[0].shape[1:]
        req = shared.request(d, prompt, negative_prompt, width, height, steps, guidance, seed, n)
        shared.check_size(req.width, req.height, self.multiple)
        max_len = d.max_sequence_length if max_sequence_length is None else max_sequence_length
        if not isinstance(max_len, int) or max_len < 1:
            raise InvalidInput(f"invalid max_sequence_length {max_len!r}")
        h, w = req.height // self.multiple, req.width // self.multiple
        shape = (req.total, self.config.transformer.in_channels, h, w)
        if inpaint is None:
            x0 = shared.initial_latents(latents, shape, lambda: noise(req.seed, req.total, shape[1:]))
        cfg = req.guidance > 1 and not self.config.is_distilled
        if req.guidance > 1 and self.config.is_distilled:
            log.info("guidance %s is ignored: %s is a step-distilled model", req.guidance, self.name)

        timings: dict[str, float] = {}
        start = time.perf_counter()
        text, neg_text = self._encode_prompts(req.prompts, req.negatives if cfg else None, req.n, max_len)
        self.backend.synchronize()
        timings["text_encode"] = time.perf_counter() - start
        refs, ref_sizes = None, []
        if references:
            mark = time.perf_counter()
            refs = self.backend.concat([self.components.encode_image(pixels) for pixels in references])
            ref_sizes = [(p.shape[1] // self.multiple, p.shape[2] // self.multiple) for p in references]
            self.backend.synchronize()
            timings["reference_encode"] = time.perf_counter() - mark
        grid = np.linspace(1.0, 1.0 / req.steps, req.steps)  # diffusers' klein grid, float64
        sigmas, _ = schedule(req.steps, self.config.scheduler, sigmas=grid, mu=layout.empirical_mu(h * w, req.steps))
        after_step = None
        if inpaint is not None:
            mark = time.perf_counter()
            sigmas = sigmas[img2img.start(req.steps, inpaint.strength):]
            x0, tokens, after_step = self._start_from_image(inpaint, req, shape, sigmas)
            refs = tokens if refs is None else self.backend.concat([tokens, refs])
            ref_sizes = [(h, w)] + ref_sizes
            timings["image_encode"] = time.perf_counter() - mark
        context = self.components.prepare(text, refs, ref_sizes, h, w)
        neg_context = self.components.prepare(neg_text, refs, ref_sizes, h, w) if cfg else None
        cache = step_cache.start(self, len(sigmas) - 1, teacache, teacache_record)  # the steps that run
        velocity = self._velocity(context, neg_context, sigmas, req.total, req.guidance, cache)
        x = shared.denoise(self.backend, self.backend.from_numpy(x0), sigmas, velocity, timings,
                           size=(req.width, req.height), on_step=on_step, previews=previews, on_preview=on_preview,
                           to_rgb=self.components.decode, after_step=after_step)
        mark = time.perf_counter()
        final = self.backend.to_numpy(x)
        pixels = self.components.decode(x)
        timings["decode"] = time.perf_counter() - mark
        images_out = shared.to_images(pixels)
        timings["total"] = time.perf_counter() - start
        if cache is not None:
            timings.update(cache.counts())
        return shared.Result(images_out, req.seed, [req.seed + i for i in range(req.total)], req.width, req.height,
                             req.steps, req.guidance, timings, final, cache,
                             strength=inpaint.strength if inpaint else None)

    def _reference_pixels(self, images, taken: int = 0) -> list[np.ndarray]:
        """Each reference image as the VAE takes it (float32 [3, h, w] in [-1, 1], h and w multiples
        of 16); `taken`: references already used (the image being inpainted)."""
        if images is None:
            return []
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) + taken > MAX_REFERENCES:
            raise InvalidInput(f"at most {MAX_REFERENCES} reference images, got {len(images) + taken}")
        return [layout.reference_pixels(image, self.multiple) for image in images]

    def _inpaint(self, images, mask, strength, latents) -> tuple[Inpaint | None, list | None]:
        """(the checked inpainting inputs or None, the reference images that remain)."""
        from PIL import Image

        if mask is None and strength is None:
            return None, images
        images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise InvalidInput("mask and strength need an input image")
        if latents is not None:
            raise InvalidInput("latents cannot be combined with an input image")
        image = images[0]
        if not isinstance(image, Image.Image) or (mask is not None and not isinstance(mask, Image.Image)):
            raise InvalidInput("the image and the mask must be images")
        if mask is not None and mask.size != image.size:
            raise InvalidInput(f"the mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}: "
                               "use a mask of the image's size")
        strength = img2img.check_strength(INPAINT_STRENGTH if strength is None else strength)
        return Inpaint(layout.within_area(image), mask, strength), images[1:]

    def _start_from_image(self, inpaint: Inpaint, req, shape, sigmas):
        """(initial latents: the image's noised to the first sigma, its reference tokens [h * w, C], the
        blend after each step that keeps the unmasked area, or None without a mask)."""
        total, channels, h, w = shape
        tokens = self.components.encode_image(img2img.pixels(inpaint.image, req.width, req.height)[0])
        image = self.backend.to_numpy(tokens).astype(np.float32).T.reshape(1, channels, h, w)
        image = np.repeat(image, total, axis=0)
        start_noise = noise(req.seed, total, shape[1:])
        x0 = img2img.scale_noise(image, start_noise, sigmas[0])
        if inpaint.mask is None:
            return x0, tokens, None
        binary = img2img.mask_pixels(inpaint.mask, req.width, req.height)
        cells = np.repeat(layout.mask_cells(binary, self.multiple), total, axis=0)
        return x0, tokens, img2img.keep_known(self.backend, image, start_noise, cells, sigmas)

    def _encode_prompts(self, prompts, negatives, n, max_len):
        """Features [P * n, max_len, D] of the prompts, and of the negatives when CFG runs; image order."""
        ids = self.tokenizer.encode(prompts + (negatives or []), max_len, enable_thinking=False)
        feats = self.components.encode_text(ids, max_len, self.tokenizer.pad_id)
        rows = lambda first: self.backend.concat([feats[first + i: first + i + 1]  # noqa: E731
                                                  for i in range(len(prompts)) for _ in range(n)])
        return rows(0), rows(len(prompts)) if negatives is not None else None

    def _velocity(self, context, neg_context, sigmas, total, guidance, cache):
        """velocity(x, i) for the Euler loop: the (guided) transformer output (through TeaCache if
        `cache`; the two CFG branches are separate forwards, each with its own cache)."""
        transformer = self.components.transformer

        def velocity(x, i: int):
            t = np.full(total, model_time(sigmas[i]), np.float32)
            pred = transformer(x, t, context, cache and cache.step(i, ("cond",)))
            if neg_context is not None:
                neg = transformer(x, t, neg_context, cache and cache.step(i, ("uncond",)))
                pred = neg + guidance * (pred - neg)
            return pred

        return velocity

