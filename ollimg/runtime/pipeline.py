"""What every family's pipeline shares: the argument checks, the Result, the Euler loop with its
progress and previews, and the Pipeline protocol the runtime process and `load` hand out.

A family's `pipeline.py` encodes prompts, builds the initial latents, gives the loop its
`velocity(x, i)` (the transformer, classifier-free guidance and any conditioning) and decodes.
Backend-neutral: numpy plus backend arrays touched only with arithmetic operators and the Backend
protocol. Knows no model family; imports no torch or mlx.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from ollimg.errors import InvalidInput
from ollimg.progress import Step
from ollimg.runtime.request import MAX_IMAGES, MAX_SEED

MAX_SIDE = 4096
OnStep = Callable[[Step], None]
OnPreview = Callable[[int, np.ndarray], None]  # (step, rgb uint8 [n, height, width, 3], the image's size)


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
    latents: np.ndarray | None = None  # float32, the final latents in the family's layout
    cache: Any = None  # the generation's TeaCache (ollimg/runtime/teacache.py), when one was used
    strength: float | None = None  # an edit's strength (None: text to image)


class Pipeline(Protocol):
    """A loaded model. `generate` is the one entry point; it is not thread-safe (one at a time).

    `generate(prompt, *, negative_prompt=None, width=None, height=None, steps=None, guidance=None,
    seed=None, n=1, latents=None, on_step=None, previews=0, on_preview=None, **family_options)`:
    None settings take `defaults`; `on_step` gets a Step after each step and may raise (e.g.
    Cancelled) to stop between steps; `on_preview` is called at `previews` evenly spaced steps;
    a family that has opted in to TeaCache also takes `teacache` (a threshold; None: off) and
    `teacache_record`, as `ollimg/runtime/teacache.py` describes."""

    name: str
    digest: str | None
    backend: Any
    defaults: Any  # the family's Defaults: at least steps, guidance, width, height
    load_seconds: float
    calibration: Any  # the model's TeaCache Calibration, or None

    def generate(self, prompt: str | list[str], **options) -> Result: ...


@dataclass
class Request:
    """The checked settings of one `generate` call, the family's defaults filled in."""

    prompts: list[str]
    negatives: list[str]
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    n: int

    @property
    def total(self) -> int:
        return len(self.prompts) * self.n


def check_size(width: int, height: int, multiple: int = 16) -> None:
    for label, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or value % multiple or not multiple <= value <= MAX_SIDE:
            raise InvalidInput(f"invalid {label} {value!r}: width and height must be multiples of {multiple} "
                               f"from {multiple} to {MAX_SIDE}")


def request(defaults, prompt, negative_prompt, width, height, steps, guidance, seed, n) -> Request:
    """Defaults applied, every argument checked (InvalidInput), a random seed drawn when None."""
    width = defaults.width if width is None else width
    height = defaults.height if height is None else height
    steps = defaults.steps if steps is None else steps
    guidance = defaults.guidance if guidance is None else float(guidance)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
    check_size(width, height)
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
    if seed is None:
        seed = secrets.randbelow(2**31)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"invalid seed {seed!r}: use a whole number from 0 to {MAX_SEED}")
    return Request(prompts, negatives, width, height, steps, guidance, seed, n)


def initial_latents(latents: np.ndarray | None, shape: tuple[int, ...], noise: Callable[[], np.ndarray]) -> np.ndarray:
    """`latents` checked against `shape` (float32), else `noise()`."""
    if latents is None:
        return noise()
    latents = np.asarray(latents)
    if latents.dtype != np.float32 or latents.shape != shape:
        raise InvalidInput(f"latents must be float32 of shape {list(shape)}, got {latents.dtype} {list(latents.shape)}")
    return latents


def denoise(backend, x, sigmas: np.ndarray, velocity: Callable[[Any, int], Any], timings: dict[str, float], *,
            size: tuple[int, int], on_step: OnStep | None = None, previews: int = 0,
            on_preview: OnPreview | None = None, to_rgb: Callable[[Any], np.ndarray] | None = None,
            after_step: Callable[[Any, int], Any] | None = None):
    """Euler steps in float32: x <- x + (sigma_next - sigma) * velocity(x, i), then
    `after_step(x, i)` when given (inpainting puts the kept area back).

    Previews show the model's current guess of the clean latents, x - sigma * velocity (flow
    matching), through the family's `to_rgb` (latents as a backend array -> uint8 [n, h, w, 3]),
    scaled (bilinear) to `size`, the (width, height) of the images being made, when smaller.

    Progress and previews of step i are reported once step i + 1 is queued (`backend.fence`): the
    host waits for a step while the device already has the next one, so it never idles."""
    steps = len(sigmas) - 1
    preview_at = set(np.linspace(0, steps, previews + 2)[1:-1].round().astype(int)) if previews else set()
    mark = time.perf_counter()
    pending = None  # (step number, fence, preview guess) of the last step queued

    def report(done: int, fence, guess) -> None:
        fence.wait()
        if on_step is not None:
            on_step(Step(done, steps, time.perf_counter() - mark))
        if guess is not None:
            on_preview(done, _scaled(to_rgb(guess), size))

    for i in range(steps):
        v = velocity(x, i)
        guess = x - float(sigmas[i]) * v if on_preview is not None and (i + 1) in preview_at else None
        dt = float(sigmas[i + 1] - sigmas[i])  # float32 difference, as the reference computes it
        x = x + dt * v
        if after_step is not None:
            x = after_step(x, i)
        if pending is not None:
            report(*pending)
        pending = (i + 1, backend.fence(x), guess) if on_step is not None or guess is not None else None
    if pending is not None:
        report(*pending)
    backend.synchronize()
    timings["denoise"] = time.perf_counter() - mark
    return x


def _scaled(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [n, h, w, 3] frames at (width, height) `size`: a preview made per latent cell is smaller."""
    from PIL import Image

    if rgb.shape[2:0:-1] == tuple(size):
        return rgb
    return np.stack([np.asarray(Image.fromarray(frame, "RGB").resize(size, Image.BILINEAR)) for frame in rgb])


def to_images(pixels: np.ndarray) -> list:
    """PIL RGB images from uint8 [n, H, W, 3]."""
    from PIL import Image

    return [Image.fromarray(p, "RGB") for p in pixels]
