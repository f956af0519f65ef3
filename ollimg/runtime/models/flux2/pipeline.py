"""The FLUX.2 [klein] pipeline: prompts to text features (Qwen3 hidden states of
`text_encoder_out_layers`, stacked per token), reference images to reference tokens, klein's
schedule (exponential time shift with the empirical mu), the Euler loop with klein's CFG, decode.

Matches diffusers 0.42.1 Flux2KleinPipeline. Backend-neutral: numpy plus backend arrays touched
only with arithmetic operators and the Backend protocol; each backend's `build` gives the
`Components`. Imports no torch or mlx.

Differences from Z-Image that matter: the chat template without thinking; every one of the
`max_sequence_length` padded text positions is kept (unmasked in the transformer); the latents are
2x2-patchified and BatchNorm-normalised (`C = 4 * latent_channels` channels at 1/16 of the image
size) and the noise is drawn in that space; the transformer gets t = sigma and its output is the
velocity itself; CFG is `neg + g * (pos - neg)`, only for g > 1 and only for undistilled models.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ollimg.errors import InvalidInput
from ollimg.progress import Step
from ollimg.runtime.models.flux2 import layout
from ollimg.runtime.models.flux2.config import Flux2Config

log = logging.getLogger(__name__)

MAX_SIDE = 4096
MAX_IMAGES = 16
MAX_REFERENCES = 8
OnPreview = Callable[[int, np.ndarray], None]


@dataclass
class Components:
    """What a backend's `build` gives the pipeline (arrays are that backend's).

    encode_text(ids int64 [B, L], mask bool [B, L]) -> [B, L, joint_attention_dim] features
    encode_image(pixels float32 [3, H, W] in [-1, 1]) -> [H/16 * W/16, C] the normalised latent's
        packed tokens (row-major)
    prepare(text [B, L, D], refs [Lr, C] or None, ref_sizes, h, w) -> a transformer context
    transformer(x float32 [B, C, h, w], t float32 [B], context) -> float32 [B, C, h, w] velocity
    decode(x float32 [B, C, h, w]) -> uint8 pixels [B, 16h, 16w, 3]
    """

    encode_text: Callable[[np.ndarray, np.ndarray], Any]
    encode_image: Callable[[np.ndarray], Any]
    prepare: Callable[..., Any]
    transformer: Callable[[Any, np.ndarray, Any], Any]
    decode: Callable[[Any], np.ndarray]
    modules: dict = field(default_factory=dict)


def sigmas(steps: int, mu: float) -> np.ndarray:
    """float32 [steps + 1]: linspace(1, 1/steps) shifted by exp(mu) / (exp(mu) + (1/s - 1)), then 0.

    The same float32 arithmetic as FlowMatchEulerDiscreteScheduler.set_timesteps with klein's
    `sigmas` and `mu`.
    """
    import math

    grid = np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)
    shifted = (math.exp(mu) / (math.exp(mu) + (1 / grid - 1) ** 1.0)).astype(np.float32)
    return np.concatenate([shifted, np.zeros(1, np.float32)])


def model_time(sigma: np.float32) -> np.float32:
    """What the transformer gets: diffusers' timestep (sigma * 1000 in float32) / 1000."""
    return np.float32(np.float32(sigma) * np.float32(1000)) / np.float32(1000)


class Flux2Pipeline:
    """A loaded FLUX.2 [klein] model. `generate` is the one entry point; one call at a time."""

    def __init__(self, name: str, digest: str | None, config: Flux2Config, tokenizer, backend: Any,
                 components: Components, load_seconds: float = 0.0):
        self.name, self.digest, self.config = name, digest, config
        self.tokenizer, self.backend, self.components = tokenizer, backend, components
        self.load_seconds = load_seconds

    @property
    def defaults(self):
        return self.config.defaults

    @property
    def channels(self) -> int:
        return self.config.transformer.in_channels

    @property
    def multiple(self) -> int:
        """Pixels per packed latent cell: the VAE's factor times the 2x2 patch."""
        return self.config.vae.scale * 2

    def generate(self, prompt: str | list[str], *, negative_prompt: str | list[str] | None = None,
                 width: int | None = None, height: int | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int | None = None, n: int = 1,
                 latents: np.ndarray | None = None, images: list | None = None,
                 on_step: Callable[[Step], None] | None = None, max_sequence_length: int | None = None,
                 previews: int = 0, on_preview: OnPreview | None = None):
        """Images for `prompt` (a list gives a batch; each prompt makes `n` images, in prompt order),
        conditioned on the reference `images` (PIL) if given; without a size, the first reference's.

        A distilled model ignores `guidance` (as diffusers does); an undistilled one runs CFG
        against `negative_prompt` (default "") when guidance > 1.
        """
        from ollimg.runtime.pipeline import Result

        d = self.defaults
        steps = d.steps if steps is None else steps
        guidance = d.guidance if guidance is None else float(guidance)
        max_len = max_sequence_length or d.max_sequence_length
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
        references = self._reference_pixels(images)
        if references and width is None and height is None:
            height, width = references[0].shape[1:]
        width = d.width if width is None else width
        height = d.height if height is None else height
        self._check(prompts, negatives, width, height, steps, guidance, n, max_len)
        total = len(prompts) * n
        shape = (self.channels, height // self.multiple, width // self.multiple)
        if latents is not None:
            latents = np.asarray(latents)
            if latents.dtype != np.float32 or latents.shape != (total, *shape):
                raise InvalidInput(f"latents must be float32 of shape {[total, *shape]}, got "
                                   f"{latents.dtype} {list(latents.shape)}")
        if seed is None:
            seed = secrets.randbelow(2**31)
        if not isinstance(seed, int) or seed < 0 or seed >= 2**63 - MAX_IMAGES:
            raise InvalidInput(f"invalid seed {seed!r}: use a whole number from 0 to 2^63")
        cfg = guidance > 1 and not self.config.is_distilled
        if guidance > 1 and self.config.is_distilled:
            log.info("guidance %s is ignored: %s is a step-distilled model", guidance, self.name)

        timings: dict[str, float] = {}
        start = time.perf_counter()
        text, neg_text = self._encode_prompts(prompts, negatives if cfg else None, n, max_len)
        self.backend.synchronize()
        timings["text_encode"] = time.perf_counter() - start
        if references:
            mark = time.perf_counter()
            refs, ref_sizes = self._encode_references(references)
            self.backend.synchronize()
            timings["reference_encode"] = time.perf_counter() - mark
        else:
            refs, ref_sizes = None, []
        h, w = shape[1:]
        context = self.components.prepare(text, refs, ref_sizes, h, w)
        neg_context = self.components.prepare(neg_text, refs, ref_sizes, h, w) if cfg else None
        x = self.backend.from_numpy(latents if latents is not None else noise(seed, total, shape))
        x = self._denoise(x, context, neg_context, steps, guidance, h * w, on_step, previews, on_preview, timings)
        mark = time.perf_counter()
        final = self.backend.to_numpy(x)
        pixels = self.components.decode(x)
        timings["decode"] = time.perf_counter() - mark
        from PIL import Image

        out = [Image.fromarray(p, "RGB") for p in pixels]
        timings["total"] = time.perf_counter() - start
        return Result(out, seed, [seed + i for i in range(total)], width, height, steps, guidance, timings, final)

    def _check(self, prompts, negatives, width, height, steps, guidance, n, max_len) -> None:
        for label, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or value % self.multiple or not self.multiple <= value <= MAX_SIDE:
                raise InvalidInput(f"invalid {label} {value!r}: width and height must be multiples of "
                                   f"{self.multiple} from {self.multiple} to {MAX_SIDE}")
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

    def _reference_pixels(self, images) -> list[np.ndarray]:
        if images is None:
            return []
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) > MAX_REFERENCES:
            raise InvalidInput(f"at most {MAX_REFERENCES} reference images, got {len(images)}")
        return [layout.reference_pixels(image, self.multiple) for image in images]

    def _encode_prompts(self, prompts, negatives, n, max_len):
        """Features [P * n, max_len, D] of the prompts (and of the negatives when CFG runs), image order."""
        texts = prompts + (negatives or [])
        ids, mask = self.tokenizer.encode_padded(texts, max_len)
        feats = self.components.encode_text(ids, mask)
        rows = lambda first: self.backend.concat([feats[first + i: first + i + 1] for i in range(len(prompts))
                                                  for _ in range(n)])
        return rows(0), rows(len(prompts)) if negatives is not None else None

    def _encode_references(self, references):
        """[sum(h_i * w_i), C] packed tokens of every reference image, and their grids (h_i, w_i)."""
        tokens = self.backend.concat([self.components.encode_image(pixels) for pixels in references])
        return tokens, [(p.shape[1] // self.multiple, p.shape[2] // self.multiple) for p in references]

    def _denoise(self, x, context, neg_context, steps, guidance, seq_len, on_step, previews, on_preview, timings):
        """Euler steps in float32: x <- x + (sigma_next - sigma) * velocity."""
        sig = sigmas(steps, layout.empirical_mu(seq_len, steps))
        total = x.shape[0]
        preview_at = set(np.linspace(0, steps, previews + 2)[1:-1].round().astype(int)) if previews else set()
        mark = time.perf_counter()
        for i in range(steps):
            t = np.full(total, model_time(sig[i]), np.float32)
            pred = self.components.transformer(x, t, context)
            if neg_context is not None:
                neg = self.components.transformer(x, t, neg_context)
                pred = neg + guidance * (pred - neg)
            x = x + float(sig[i + 1] - sig[i]) * pred  # float32 difference, as the scheduler computes it
            if on_step is not None:
                self.backend.synchronize()
                on_step(Step(i + 1, steps, time.perf_counter() - mark))
            if on_preview is not None and (i + 1) in preview_at:
                from ollimg.runtime.pipeline import preview_rgb

                on_preview(i + 1, preview_rgb(self.backend.to_numpy(x)))
        self.backend.synchronize()
        timings["denoise"] = time.perf_counter() - mark
        return x


def noise(seed: int, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 [n, *shape]: image i from PCG64(seed + i), the same on every backend."""
    from ollimg.runtime.models.zimage.layout import noise as shared_noise  # the shared noise.py after the refactor

    return shared_noise(seed, n, shape)
