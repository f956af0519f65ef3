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
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ollimg.errors import InvalidInput
from ollimg.runtime import pipeline as shared
from ollimg.runtime import teacache as step_cache
from ollimg.runtime.flow_match import schedule
from ollimg.runtime.models.flux2 import layout
from ollimg.runtime.models.flux2.config import Flux2Config
from ollimg.runtime.noise import noise
from ollimg.runtime.tokenizer import PromptTokenizer

log = logging.getLogger(__name__)

MAX_REFERENCES = 8


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
                 latents: np.ndarray | None = None, images: list | None = None,
                 on_step: shared.OnStep | None = None, max_sequence_length: int | None = None,
                 previews: int = 0, on_preview: shared.OnPreview | None = None, teacache: float | None = None,
                 teacache_record: bool = False) -> shared.Result:
        """Images for `prompt` (a list gives a batch; each prompt makes `n` images, in prompt order),
        conditioned on the reference `images` (PIL images) when given; with references and no
        size, the size of the first reference (as diffusers).

        `latents`: float32 [n, C, height/16, width/16] (the normalised, patchified latent space)
        instead of the seeded noise. `teacache`: a TeaCache threshold (None: off; the model must be
        calibrated); `teacache_record`: run every step and record TeaCache's calibration trace in
        `Result.cache`."""
        d = self.defaults
        references = self._reference_pixels(images)
        if references and width is None and height is None:
            height, width = references[0].shape[1:]
        req = shared.request(d, prompt, negative_prompt, width, height, steps, guidance, seed, n)
        shared.check_size(req.width, req.height, self.multiple)
        max_len = d.max_sequence_length if max_sequence_length is None else max_sequence_length
        if not isinstance(max_len, int) or max_len < 1:
            raise InvalidInput(f"invalid max_sequence_length {max_len!r}")
        h, w = req.height // self.multiple, req.width // self.multiple
        shape = (req.total, self.config.transformer.in_channels, h, w)
        x0 = shared.initial_latents(latents, shape, lambda: noise(req.seed, req.total, shape[1:]))
        cfg = req.guidance > 1 and not self.config.is_distilled
        if req.guidance > 1 and self.config.is_distilled:
            log.info("guidance %s is ignored: %s is a step-distilled model", req.guidance, self.name)
        cache = step_cache.start(self, req.steps, teacache, teacache_record)

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
        context = self.components.prepare(text, refs, ref_sizes, h, w)
        neg_context = self.components.prepare(neg_text, refs, ref_sizes, h, w) if cfg else None
        grid = np.linspace(1.0, 1.0 / req.steps, req.steps)  # diffusers' klein grid, float64
        sigmas, _ = schedule(req.steps, self.config.scheduler, sigmas=grid, mu=layout.empirical_mu(h * w, req.steps))
        velocity = self._velocity(context, neg_context, sigmas, req.total, req.guidance, cache)
        x = shared.denoise(self.backend, self.backend.from_numpy(x0), sigmas, velocity, timings, on_step=on_step,
                           previews=previews, on_preview=on_preview, to_rgb=self.components.decode)
        mark = time.perf_counter()
        final = self.backend.to_numpy(x)
        pixels = self.components.decode(x)
        timings["decode"] = time.perf_counter() - mark
        images_out = shared.to_images(pixels)
        timings["total"] = time.perf_counter() - start
        if cache is not None:
            timings.update(cache.counts())
        return shared.Result(images_out, req.seed, [req.seed + i for i in range(req.total)], req.width, req.height,
                             req.steps, req.guidance, timings, final, cache)

    def _reference_pixels(self, images) -> list[np.ndarray]:
        """Each reference image as the VAE takes it (float32 [3, h, w] in [-1, 1], h and w multiples of 16)."""
        if images is None:
            return []
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) > MAX_REFERENCES:
            raise InvalidInput(f"at most {MAX_REFERENCES} reference images, got {len(images)}")
        return [layout.reference_pixels(image, self.multiple) for image in images]

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

