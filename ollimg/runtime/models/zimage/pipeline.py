"""The Z-Image pipeline: prompts through the chat template and Qwen3 (hidden_states[-2]), the
DiT with Z-Image's classifier-free guidance (truncation, renormalisation), the FLUX VAE decode;
starting from an image (diffusers' ZImageImg2ImgPipeline) and inpainting with a mask
(ZImageInpaintPipeline) through the VAE encoder.

The loop itself is the shared Euler loop (`ollimg/runtime/pipeline.py`); this module gives it
the velocity. Backend-neutral: numpy plus backend arrays touched only with arithmetic operators
and the Backend protocol. Imports no torch or mlx.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ollimg.errors import InvalidInput
from ollimg.progress import Step
from ollimg.runtime import img2img
from ollimg.runtime import pipeline as shared
from ollimg.runtime import teacache as step_cache
from ollimg.runtime.flow_match import schedule
from ollimg.runtime.models.zimage.config import ZImageConfig
from ollimg.runtime.noise import noise
from ollimg.runtime.tokenizer import PromptTokenizer


@dataclass
class Components:
    """What a backend's `build.py` makes of the weights."""

    encode: Callable[[list[np.ndarray]], list[Any]]
    """token ids of each prompt (unpadded, int64) -> caption features [L_i, hidden] in the compute dtype"""
    transformer: Callable[..., Any]
    """x float32 [B, C, H/8, W/8], t float32 [B] (`model_time`), B caption features, a TeaCache
    StepCache or None -> the raw DiT output as float32 [B, C, H/8, W/8] (the velocity is its negative)"""
    decode: Callable[[Any], np.ndarray]
    """the final float32 latents -> uint8 [B, H, W, 3] pixels (unscaled by z / scaling_factor +
    shift_factor, decoded in the compute dtype, round half to even of clamp(x/2+0.5, 0, 1) * 255)"""
    modules: dict = field(default_factory=dict)
    encode_image: Callable[[np.ndarray], np.ndarray] | None = None
    """pixels float32 [1, 3, H, W] in [-1, 1] -> the VAE posterior's mean and log-variance as
    float32 [1, 2 * latent, H/8, W/8]; None when the model holds no VAE encoder (it cannot edit)"""
    on_status: Callable[[str], None] | None = None
    """set by the pipeline during a generation: what a backend reports before long one-off work
    (the first run of a torch.compile'd graph)"""
    begin: Callable[[], None] | None = None
    """called as each generation starts, `on_status` already set (a torch backend switches to its
    compiled blocks there, never within a generation)"""
    end: Callable[[], None] | None = None
    """called as each generation ends, done or failed (also when `begin` failed)"""


@dataclass
class Edit:
    """An input image (and mask) as the loop takes them."""

    image: Any  # PIL image
    mask: Any  # PIL image or None
    strength: float


def model_time(timestep: np.float32) -> np.float32:
    """What the DiT gets for a timestep: (1000 - t) / 1000 in float32 (0 is pure noise)."""
    return (np.float32(1000) - np.float32(timestep)) / np.float32(1000)


class ZImagePipeline:
    """A loaded Z-Image model. `generate` is the one entry point; not thread-safe (one at a time)."""

    def __init__(self, name: str, digest: str | None, config: ZImageConfig, tokenizer: PromptTokenizer,
                 backend: Any, components: Components):
        self.name, self.digest, self.config = name, digest, config
        self.tokenizer, self.backend, self.components = tokenizer, backend, components
        vae = config.vae
        self.flux_vae = (vae.latent_channels, vae.scaling_factor, vae.shift_factor) == FLUX_VAE
        self.load_seconds = 0.0
        self.calibration: step_cache.Calibration | None = None  # set by `ollimg.runtime.load`

    @property
    def defaults(self):
        return self.config.defaults

    def generate(self, prompt: str | list[str], *, negative_prompt: str | list[str] | None = None,
                 width: int | None = None, height: int | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int | None = None, n: int = 1,
                 latents: np.ndarray | None = None, on_step: shared.OnStep | None = None,
                 cfg_truncation: float | None = None, cfg_normalization: float | None = None,
                 max_sequence_length: int | None = None, previews: int = 0,
                 on_preview: shared.OnPreview | None = None, teacache: float | None = None,
                 teacache_record: bool = False, images: list | None = None, mask: Any = None,
                 strength: float | None = None) -> shared.Result:
        """Images for `prompt` (a list gives a batch; each prompt makes `n` images, in prompt order).

        `latents`: float32 [n, 16, height/s, width/s] (s: the VAE's pixels per cell, 8) instead of the seeded noise. `teacache`: a
        TeaCache threshold (None: off; the model must be calibrated); `teacache_record`: run every
        step and record TeaCache's calibration trace in `Result.cache`.
        `images`: one PIL image to start from (img2img); its size, rounded down to multiples of 16,
        is the output's unless width and height say otherwise. `strength` (default 0.6, or 1.0 with a
        mask) in (0, 1]: how much of it is redrawn; the last steps * strength steps run. `mask`: a
        PIL image of the input's size, white where the image is redrawn (inpainting)."""
        d = self.defaults
        edit = self._edit(images, mask, strength)
        if edit is not None:
            if latents is not None:
                raise InvalidInput("latents cannot be combined with an input image")
            width, height = img2img.output_size(edit.image, width, height, 16)
        req = shared.request(d, prompt, negative_prompt, width, height, steps, guidance, seed, n)
        cfg_truncation = d.cfg_truncation if cfg_truncation is None else float(cfg_truncation)
        cfg_normalization = d.cfg_normalization if cfg_normalization is None else float(cfg_normalization)
        max_len = max_sequence_length or d.max_sequence_length
        if not isinstance(max_len, int) or max_len < 1:
            raise InvalidInput(f"invalid max_sequence_length {max_len!r}")
        cell = self.config.vae.scale  # pixels per latent cell: 8 for the FLUX VAE
        shape = (req.total, self.config.transformer.in_channels, req.height // cell, req.width // cell)
        sigmas, timesteps = schedule(req.steps, self.config.scheduler)
        if edit is not None:
            first = img2img.start(req.steps, edit.strength)
            sigmas, timesteps = sigmas[first:], timesteps[first:]
        cache = step_cache.start(self, len(timesteps), teacache, teacache_record)  # the steps that run
        timings: dict[str, float] = {}
        if on_step is not None:  # the compiler's one-off work is reported from `begin` on
            self.components.on_status = lambda text: on_step(Step(0, len(timesteps), 0.0, text))
        try:
            if self.components.begin is not None:
                self.components.begin()
            start = time.perf_counter()
            caps, neg_caps = self._encode(req.prompts, req.negatives if req.guidance > 0 else None, req.n, max_len)
            self.backend.synchronize()
            timings["text_encode"] = time.perf_counter() - start
            after_step = None
            if edit is None:
                x0 = self.backend.from_numpy(shared.initial_latents(latents, shape,
                                                                    lambda: noise(req.seed, req.total, shape[1:])))
            else:
                mark = time.perf_counter()
                x0, after_step = self._start_from_image(edit, req, shape, sigmas)
                timings["image_encode"] = time.perf_counter() - mark
            velocity = self._velocity(caps, neg_caps, timesteps, req.guidance, cfg_truncation, cfg_normalization, cache)
            x = shared.denoise(self.backend, x0, sigmas, velocity, timings, size=(req.width, req.height),
                               on_step=on_step, previews=previews, on_preview=on_preview, to_rgb=self.preview,
                               after_step=after_step)
            self.components.on_status = None
            mark = time.perf_counter()
            final = self.backend.to_numpy(x)
            pixels = self.components.decode(x)
            timings["decode"] = time.perf_counter() - mark
        finally:
            self.components.on_status = None
            if self.components.end is not None:
                self.components.end()
        images = shared.to_images(pixels)
        timings["total"] = time.perf_counter() - start
        if cache is not None:
            timings.update(cache.counts())
        return shared.Result(images, req.seed, [req.seed + i for i in range(req.total)], req.width, req.height,
                             req.steps, req.guidance, timings, final, cache, edit.strength if edit is not None else None)

    def _edit(self, images, mask, strength) -> Edit | None:
        """The checked edit inputs, or None for text-to-image."""
        if images is None or (isinstance(images, (list, tuple)) and not images):
            if mask is not None or strength is not None:
                raise InvalidInput("mask and strength need an input image")
            return None
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(images) > 1:
            raise InvalidInput(f"{self.name} edits one image at a time, got {len(images)} images", param="images")
        if self.components.encode_image is None:
            raise InvalidInput(f"model {self.name} cannot edit images: it has no VAE encoder", param="model")
        image = images[0]
        if mask is not None and mask.size != image.size:
            raise InvalidInput(f"the mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}: "
                               "use a mask of the image's size")
        strength = (1.0 if mask is not None else 0.6) if strength is None else strength
        return Edit(image, mask, img2img.check_strength(strength))

    def _start_from_image(self, edit: Edit, req, shape, sigmas):
        """The initial latents (the image's latents noised to the first sigma) and, with a mask, the
        blend after each step that puts back the kept area at the next step's noise level."""
        vae = self.config.vae
        pixels = img2img.pixels(edit.image, req.width, req.height)
        eps = img2img.posterior_noise(req.seed, shape[1:])
        latents = img2img.sample_posterior(self.components.encode_image(pixels), eps)
        latents = (latents - np.float32(vae.shift_factor)) * np.float32(vae.scaling_factor)
        image = np.repeat(latents, req.total, axis=0)
        start_noise = noise(req.seed, req.total, shape[1:])
        x0 = self.backend.from_numpy(img2img.scale_noise(image, start_noise, sigmas[0]))
        if edit.mask is None:
            return x0, None
        cells = np.repeat(img2img.mask_cells(edit.mask, req.width, req.height, vae.scale), req.total, axis=0)
        return x0, img2img.keep_known(self.backend, image, start_noise, cells, sigmas)

    def preview(self, latents) -> np.ndarray:
        """uint8 [n, h, w, 3] of latents (a backend array): the FLUX.1 VAE's linear map (a pixel per
        latent cell), else this model's own VAE decode (full size; cheap for the small VAEs it is)."""
        if self.flux_vae:
            return flux_vae_rgb(self.backend.to_numpy(latents))
        return self.components.decode(latents)

    def _encode(self, prompts, negatives, n, max_len):
        ids = self.tokenizer.encode(prompts + (negatives or []), max_len)
        feats = self.components.encode(ids)
        caps = [f for f in feats[: len(prompts)] for _ in range(n)]
        neg = [f for f in feats[len(prompts):] for _ in range(n)] if negatives is not None else None
        return caps, neg

    def _velocity(self, caps, neg_caps, timesteps, guidance, cfg_truncation, cfg_normalization, cache):
        """velocity(x, i) for the Euler loop: minus the (guided) DiT output (through TeaCache if `cache`)."""
        total, transformer = len(caps), self.components.transformer

        def velocity(x, i: int):
            t = model_time(timesteps[i])
            if guidance > 0 and not (cfg_truncation <= 1 and t > cfg_truncation):
                out = transformer(self.backend.concat([x, x]), np.full(2 * total, t, np.float32), caps + neg_caps,
                                  cache and cache.step(i, ("cond", "uncond")))
                pos, neg = out[:total], out[total:]
                pred = pos + guidance * (pos - neg)
                if cfg_normalization > 0:
                    pred = self._renormalise(pred, pos, cfg_normalization)
            else:
                pred = transformer(x, np.full(total, t, np.float32), caps, cache and cache.step(i, ("cond",)))
            return -pred

        return velocity

    def _renormalise(self, pred, pos, k: float):
        """Scale each image's guided prediction down to at most k times the norm of its positive one."""
        rows = []
        for j in range(len(pos)):
            p, q = pos[j: j + 1], pred[j: j + 1]
            limit, norm = self.backend.norm(p) * k, self.backend.norm(q)
            rows.append(q * (limit / norm) if norm > limit else q)
        return self.backend.concat(rows)


# Approximate latent -> RGB for previews: the linear map ComfyUI uses for the FLUX.1 VAE's latents
# in the denoiser's (scaled) space (comfy/latent_formats.py, class Flux: latent_rgb_factors and
# _bias). Z-Image-Turbo ships that VAE, known by its latent channels, scaling and shift; any other
# VAE (the built-in model's was trained here) previews through its own decoder instead.
FLUX_VAE = (16, 0.3611, 0.1159)  # latent_channels, scaling_factor, shift_factor
FLUX_VAE_RGB = np.array([
    [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433], [-0.0174, 0.0160, 0.0617],
    [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115], [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259],
    [-0.0245, 0.0250, 0.1180], [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
    [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499], [-0.1262, -0.0982, -0.0778],
], dtype=np.float32)
FLUX_VAE_BIAS = np.array([-0.0329, -0.0718, -0.0851], dtype=np.float32)


def flux_vae_rgb(latents: np.ndarray) -> np.ndarray:
    """uint8 [n, h, w, 3] from FLUX.1-VAE latents float32 [n, 16, h, w]: one pixel per cell, no VAE."""
    rgb = np.einsum("nchw,ck->nhwk", latents, FLUX_VAE_RGB) + FLUX_VAE_BIAS
    return ((rgb + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
