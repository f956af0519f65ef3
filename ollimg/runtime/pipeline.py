"""The shared Z-Image pipeline: input checks, prompts, noise, the denoise loop with CFG, decode.

Backend-neutral: numpy plus backend arrays touched only with arithmetic operators and the
Backend protocol (`ollimg/runtime/backend.py`). Imports no torch or mlx.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ollimg.errors import InvalidInput
from ollimg.progress import Step
from ollimg.runtime.models.zimage import layout
from ollimg.runtime.models.zimage.config import ZImageConfig
from ollimg.runtime.scheduler import model_time, schedule
from ollimg.runtime.tokenizer import PromptTokenizer

MAX_SIDE = 4096
MAX_IMAGES = 16
OnPreview = Callable[[int, np.ndarray], None]


@dataclass
class Result:
    images: list  # PIL images
    seed: int  # image i used seed + i
    seeds: list[int]
    width: int
    height: int
    steps: int
    guidance: float
    timings: dict[str, float] = field(default_factory=dict)
    latents: np.ndarray | None = None  # float32 [n, 16, h/8, w/8], the final latents


def check_size(width: int, height: int) -> None:
    for label, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or value % 16 or not 16 <= value <= MAX_SIDE:
            raise InvalidInput(f"invalid {label} {value!r}: width and height must be multiples of 16 "
                               f"from 16 to {MAX_SIDE}")


class Pipeline:
    """A loaded model. `generate` is the one entry point; it is not thread-safe (one at a time)."""

    def __init__(self, name: str, digest: str | None, config: ZImageConfig, tokenizer: PromptTokenizer,
                 backend: Any, components: Any, load_seconds: float = 0.0):
        self.name, self.digest, self.config = name, digest, config
        self.tokenizer, self.backend, self.components = tokenizer, backend, components
        self.load_seconds = load_seconds

    @property
    def defaults(self):
        return self.config.defaults

    def generate(self, prompt: str | list[str], *, negative_prompt: str | list[str] | None = None,
                 width: int | None = None, height: int | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int | None = None, n: int = 1,
                 latents: np.ndarray | None = None, on_step: Callable[[Step], None] | None = None,
                 cfg_truncation: float | None = None, cfg_normalization: float | None = None,
                 max_sequence_length: int | None = None, previews: int = 0,
                 on_preview: OnPreview | None = None) -> Result:
        """Images for `prompt` (a list gives a batch; each prompt makes `n` images, in prompt order).

        `on_step` gets a Step after each step and may raise (e.g. Cancelled) to stop between steps;
        `on_preview(step, rgb_uint8 [n, h/8, w/8, 3])` is called at `previews` evenly spaced steps.
        """
        d = self.defaults
        width = d.width if width is None else width
        height = d.height if height is None else height
        steps = d.steps if steps is None else steps
        guidance = d.guidance if guidance is None else float(guidance)
        cfg_truncation = d.cfg_truncation if cfg_truncation is None else float(cfg_truncation)
        cfg_normalization = d.cfg_normalization if cfg_normalization is None else float(cfg_normalization)
        max_len = max_sequence_length or d.max_sequence_length
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
        check_size(width, height)
        self._check(prompts, negatives, steps, guidance, n, max_len)
        total = len(prompts) * n
        shape = (self.config.transformer.in_channels, height // 8, width // 8)
        if latents is not None:
            latents = np.asarray(latents)
            if latents.dtype != np.float32 or latents.shape != (total, *shape):
                raise InvalidInput(f"latents must be float32 of shape {[total, *shape]}, got "
                                   f"{latents.dtype} {list(latents.shape)}")
        if seed is None:
            seed = secrets.randbelow(2**31)
        if not isinstance(seed, int) or seed < 0 or seed >= 2**63 - MAX_IMAGES:
            raise InvalidInput(f"invalid seed {seed!r}: use a whole number from 0 to 2^63")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        caps, neg_caps = self._encode(prompts, negatives if guidance > 0 else None, n, max_len)
        self.backend.synchronize()
        timings["text_encode"] = time.perf_counter() - start
        x = self.backend.from_numpy(latents if latents is not None else layout.noise(seed, total, shape))
        x = self._denoise(x, caps, neg_caps, steps, guidance, cfg_truncation, cfg_normalization,
                          on_step, previews, on_preview, timings)
        mark = time.perf_counter()
        final = self.backend.to_numpy(x)
        pixels = self.components.decode(x)
        timings["decode"] = time.perf_counter() - mark
        from PIL import Image

        images = [Image.fromarray(p, "RGB") for p in pixels]
        timings["total"] = time.perf_counter() - start
        return Result(images, seed, [seed + i for i in range(total)], width, height, steps, guidance, timings, final)

    def _check(self, prompts, negatives, steps, guidance, n, max_len) -> None:
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InvalidInput("prompt must be a string or a non-empty list of strings")
        if len(negatives) != len(prompts) or not all(isinstance(p, str) for p in negatives):
            raise InvalidInput("negative_prompt must be a string or a list as long as the prompts")
        if not isinstance(steps, int) or not 1 <= steps <= 1000:
            raise InvalidInput(f"invalid steps {steps!r}: use 1 to 1000")
        if not guidance >= 0 or guidance > 100:
            raise InvalidInput(f"invalid guidance {guidance!r}: use 0 (off) to 100")
        if not isinstance(n, int) or not 1 <= n or len(prompts) * n > MAX_IMAGES:
            raise InvalidInput(f"invalid n {n!r}: at most {MAX_IMAGES} images per request")
        if not isinstance(max_len, int) or max_len < 1:
            raise InvalidInput(f"invalid max_sequence_length {max_len!r}")

    def _encode(self, prompts, negatives, n, max_len):
        ids = self.tokenizer.encode(prompts + (negatives or []), max_len)
        feats = self.components.encode(ids)
        caps = [f for f in feats[: len(prompts)] for _ in range(n)]
        neg = [f for f in feats[len(prompts):] for _ in range(n)] if negatives is not None else None
        return caps, neg

    def _denoise(self, x, caps, neg_caps, steps, guidance, cfg_truncation, cfg_normalization,
                 on_step, previews, on_preview, timings):
        """Euler steps in float32: x <- x + (sigma_next - sigma) * velocity, velocity = -output."""
        sigmas, timesteps = schedule(steps, self.config.scheduler)
        total = len(caps)
        preview_at = set(np.linspace(0, steps, previews + 2)[1:-1].round().astype(int)) if previews else set()
        mark = time.perf_counter()
        for i, timestep in enumerate(timesteps):
            t = model_time(timestep)
            cfg = guidance > 0 and not (cfg_truncation <= 1 and t > cfg_truncation)
            if cfg:
                out = self.components.transformer(self.backend.concat([x, x]), np.full(2 * total, t, np.float32),
                                                  caps + neg_caps)
                pos, neg = out[:total], out[total:]
                pred = pos + guidance * (pos - neg)
                if cfg_normalization > 0:
                    pred = self._renormalise(pred, pos, cfg_normalization)
            else:
                pred = self.components.transformer(x, np.full(total, t, np.float32), caps)
            dt = float(sigmas[i + 1] - sigmas[i])  # float32 difference, as the reference computes it
            x = x + dt * (-pred)
            if on_step is not None:
                self.backend.synchronize()
                on_step(Step(i + 1, steps, time.perf_counter() - mark))
            if on_preview is not None and (i + 1) in preview_at:
                on_preview(i + 1, preview_rgb(self.backend.to_numpy(x)))
        self.backend.synchronize()
        timings["denoise"] = time.perf_counter() - mark
        return x

    def _renormalise(self, pred, pos, k: float):
        """Scale each image's guided prediction down to at most k times the norm of its positive one."""
        rows = []
        for j in range(len(pos)):
            p, q = pos[j: j + 1], pred[j: j + 1]
            limit, norm = self.backend.norm(p) * k, self.backend.norm(q)
            rows.append(q * (limit / norm) if norm > limit else q)
        return self.backend.concat(rows)


# Approximate latent -> RGB for previews: the linear map ComfyUI uses for FLUX-VAE latents in the
# denoiser's (scaled) space (comfy/latent_formats.py, class Flux: latent_rgb_factors and _bias).
_PREVIEW_RGB = np.array([
    [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433], [-0.0174, 0.0160, 0.0617],
    [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115], [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259],
    [-0.0245, 0.0250, 0.1180], [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
    [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499], [-0.1262, -0.0982, -0.0778],
], dtype=np.float32)
_PREVIEW_BIAS = np.array([-0.0329, -0.0718, -0.0851], dtype=np.float32)


def preview_rgb(latents: np.ndarray) -> np.ndarray:
    """uint8 [n, h, w, 3] from float32 latents [n, 16, h, w]: cheap, no VAE."""
    if latents.shape[1] != _PREVIEW_RGB.shape[0]:
        grey = latents.mean(axis=1, keepdims=True)
        rgb = np.repeat(grey, 3, axis=1).transpose(0, 2, 3, 1) * 0.25
    else:
        rgb = np.einsum("nchw,ck->nhwk", latents, _PREVIEW_RGB) + _PREVIEW_BIAS
    return ((rgb + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
