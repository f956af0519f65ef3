"""TeaCache (Liu et al. 2024, "Timestep Embedding Tells: It's Time to Cache for Video Diffusion
Model"): skip a step's block stack when the first block's modulated input has barely changed.

The rule, per CFG branch: at step i the relative L1 change of the first block's modulated input,
d_i = mean|m_i - m_{i-1}| / mean|m_{i-1}|, is rescaled by the model's fitted polynomial (clamped
at 0) and added to an accumulator. While the accumulator stays below the threshold the step reuses
the branch's cached residual of the whole block stack (out = in + residual); otherwise the stack
runs, the residual is refreshed and the accumulator reset. The first and last steps always run.
m_{i-1} is the previous step's input whether that step ran or not, as in TeaCache. When one forward
carries several branches (batched CFG) the stack is skipped only if every branch may skip; a run
refreshes every branch it carries. Threshold 0 never skips. A step counts as reused when every
forward at that step reused its cache (a family may run its CFG branches as separate forwards).

A family opts in through two things, both backend arrays [B, ...] with the branches stacked in
equal row blocks along axis 0, in the order the family names them:
- its transformer's forward takes `cache` (a `StepCache` or None); with one, it computes the first
  block's modulated input `m` (the input after its timestep/adaLN modulation, before attention)
  and returns through `cache.stack(m, hidden, run)` instead of `run(hidden)`, where `hidden` is the
  block stack's input and `run(hidden)` runs the stack (a family whose stack carries two streams
  concatenates them along the sequence axis around `run`);
- its pipeline's velocity passes `cache.step(i, branches)` for each forward (branches: e.g.
  ("cond", "uncond") for a batched CFG forward, ("cond",) without guidance).

`Calibration` is the fitted polynomial, stored with a model as the file `teacache.json`; `fit`
makes it from the (d_in, d_out) pairs a recording run collects. Knows no model family; imports
no torch or mlx.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ollimg.errors import InvalidInput

CALIBRATION_FILE = "teacache.json"
DEGREE = 4  # TeaCache's published fits are quartic
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2)


@dataclass(frozen=True)
class Calibration:
    """rescale(d) = max(0, polyval(coefficients, d)); coefficients highest power first."""

    coefficients: tuple[float, ...]
    fit_error: float  # root-mean-square error of the fit, in units of d_out
    steps: int
    prompts: int
    samples: int
    skipped: dict[str, float] = field(default_factory=dict)  # threshold -> expected fraction of skipped steps

    def rescale(self, d: float) -> float:
        return max(0.0, float(np.polyval(self.coefficients, d)))

    def to_json(self) -> dict:
        return {"coefficients": list(self.coefficients), "fit_error": self.fit_error, "steps": self.steps,
                "prompts": self.prompts, "samples": self.samples, "skipped": self.skipped}

    @classmethod
    def from_json(cls, data: dict, where: str) -> "Calibration":
        try:
            coefficients = tuple(float(c) for c in data["coefficients"])
            if not coefficients or not all(np.isfinite(coefficients)):
                raise ValueError("no finite coefficients")
            return cls(coefficients, float(data["fit_error"]), int(data["steps"]), int(data["prompts"]),
                       int(data.get("samples", 0)), {str(k): float(v) for k, v in (data.get("skipped") or {}).items()})
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidInput(f"{where}: {CALIBRATION_FILE} is not a TeaCache calibration ({e}); "
                               f"run: ollimg calibrate again") from None


def read_calibration(source) -> Calibration | None:
    """The model's calibration (a ModelSource with a `teacache.json` file), or None."""
    if not source.has(CALIBRATION_FILE):
        return None
    return Calibration.from_json(source.json(CALIBRATION_FILE), f"model {source.name}")


def check_threshold(threshold: float | None, calibrated: bool, model: str) -> float | None:
    """The threshold to use, or None for no caching; InvalidInput if it is out of range or the
    model has no calibration (the server checks this before a model runs, the runtime again)."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 100:
        raise InvalidInput(f"invalid teacache {threshold!r}: use a threshold from 0 to 100 (0.2 is a usual start)")
    if not calibrated:
        raise InvalidInput(f"model {model} has no TeaCache calibration; run: ollimg calibrate {model}")
    return float(threshold)


@dataclass
class Branch:
    """One CFG branch: the previous step's modulated input, the accumulator, the stack's residual."""

    previous: Any = None
    accumulated: float = 0.0
    residual: Any = None


class TeaCache:
    """The caches of one generation. `record=True` (calibration) runs every step and collects
    `trace`: (branch, step, d_in, d_out) with d_out the relative L1 change of the residual."""

    def __init__(self, backend, steps: int, threshold: float = 0.0, calibration: Calibration | None = None,
                 record: bool = False):
        if calibration is None and not record:
            raise ValueError("TeaCache needs a calibration unless it records")
        self.backend, self.steps, self.threshold = backend, steps, threshold
        self.calibration, self.record = calibration, record
        self.branches: dict[str, Branch] = {}
        self.ran_steps: set[int] = set()  # steps where some forward ran the stack
        self.reused_steps: set[int] = set()  # steps where some forward reused the cache
        self.trace: list[tuple[str, int, float, float]] = []

    def step(self, i: int, branches: tuple[str, ...]) -> "StepCache":
        return StepCache(self, i, branches)

    @property
    def ran(self) -> int:
        return len(self.ran_steps)

    @property
    def reused(self) -> int:
        """The steps whose every forward reused the cache."""
        return len(self.reused_steps - self.ran_steps)

    def counts(self) -> dict[str, float]:
        return {"steps_run": float(self.ran), "steps_reused": float(self.reused)}

    def _change(self, now, before) -> float:
        base = self.backend.mean_abs(before)
        return self.backend.mean_abs(now - before) / base if base > 0 else float("inf")


@dataclass
class StepCache:
    """What a family's transformer gets for one forward at step `i`."""

    cache: TeaCache
    i: int
    branches: tuple[str, ...]

    def stack(self, modulated, hidden, run: Callable[[Any], Any]):
        """run(hidden), or hidden + the cached residuals when every branch may skip this step."""
        cache, rows = self.cache, modulated.shape[0] // len(self.branches)
        parts = [cache.branches.setdefault(name, Branch()) for name in self.branches]
        must_run = cache.record or self.i == 0 or self.i == cache.steps - 1
        inputs = []
        for k, branch in enumerate(parts):
            m = modulated[k * rows:(k + 1) * rows]
            d = None if branch.previous is None else cache._change(m, branch.previous)
            inputs.append(d)
            if d is None or branch.residual is None:
                must_run = True
            elif not cache.record:
                branch.accumulated += cache.calibration.rescale(d)
                must_run = must_run or branch.accumulated >= cache.threshold
            branch.previous = m
        if not must_run:
            cache.reused_steps.add(self.i)
            residuals = [b.residual for b in parts]
            return hidden + (residuals[0] if len(residuals) == 1 else cache.backend.concat(residuals))
        out = run(hidden)
        residual = out - hidden
        for k, (name, branch) in enumerate(zip(self.branches, parts)):
            new = residual[k * rows:(k + 1) * rows]
            if cache.record and inputs[k] is not None and branch.residual is not None:
                cache.trace.append((name, self.i, inputs[k], cache._change(new, branch.residual)))
            branch.residual, branch.accumulated = new, 0.0
        cache.ran_steps.add(self.i)
        return out


def fit(trace: list[tuple[float, float]], steps: int, prompts: int, runs: list[list[float]]) -> Calibration:
    """The polynomial d_out ~ poly(d_in) over the recorded pairs, with its RMS error, and the
    expected fraction of skipped steps per threshold from replaying the rule on each run's d_in
    sequence (`runs`: one list per generation and branch, d_in of steps 1..steps-1)."""
    if len(trace) < DEGREE + 2:
        raise InvalidInput(f"calibration needs at least {DEGREE + 2} step pairs, got {len(trace)}: "
                           f"use more prompts or --steps of at least 3")
    x, y = np.array(trace, np.float64).T
    coefficients = np.polyfit(x, y, DEGREE)
    error = float(np.sqrt(np.mean((np.polyval(coefficients, x) - y) ** 2)))
    calibration = Calibration(tuple(float(c) for c in coefficients), error, steps, prompts, len(trace))
    skipped = {f"{t:g}": replay(calibration, runs, steps, t) for t in THRESHOLDS}
    return Calibration(calibration.coefficients, error, steps, prompts, len(trace), skipped)


def replay(calibration: Calibration, runs: list[list[float]], steps: int, threshold: float) -> float:
    """The fraction of steps the rule skips over recorded d_in sequences (one branch each)."""
    skipped = 0
    for changes in runs:
        accumulated = 0.0
        for i, d in enumerate(changes, start=1):
            accumulated += calibration.rescale(d)
            if i == steps - 1 or accumulated >= threshold:
                accumulated = 0.0
            else:
                skipped += 1
    return skipped / (len(runs) * steps) if runs else 0.0


def supported(pipeline) -> bool:
    """Whether the pipeline's family has opted in (its `generate` takes `teacache`)."""
    return "teacache" in inspect.signature(pipeline.generate).parameters


def refuse_unsupported(pipeline) -> None:
    if not supported(pipeline):
        raise InvalidInput(f"model {pipeline.name}: TeaCache is not available for this model family yet")


def start(pipeline, steps: int, threshold: float | None, record: bool = False) -> TeaCache | None:
    """The cache for one generation of `pipeline` (its backend, name and `calibration`), or None
    when neither caching nor recording was asked for; InvalidInput if the model is not calibrated."""
    if record:
        return TeaCache(pipeline.backend, steps, record=True)
    threshold = check_threshold(threshold, pipeline.calibration is not None, pipeline.name)
    if threshold is None:
        return None
    return TeaCache(pipeline.backend, steps, threshold, pipeline.calibration)


def calibrate(pipeline, prompts: list[str], steps: int | None = None, seed: int = 0,
              on_step: Callable | None = None) -> Calibration:
    """Full generations of `prompts` (one at a time, image j with seed + j) at the model's defaults
    (`steps` if given), recording every step; the fitted Calibration."""
    if not prompts:
        raise InvalidInput("calibration needs at least one prompt")
    refuse_unsupported(pipeline)
    pairs, runs, used = [], [], None
    for j, prompt in enumerate(prompts):
        result = pipeline.generate(prompt, steps=steps, seed=seed + j, on_step=on_step, teacache_record=True)
        used = result.steps
        for name in dict.fromkeys(b for b, *_ in result.cache.trace):
            rows = [(d_in, d_out) for b, _, d_in, d_out in result.cache.trace if b == name]
            pairs += rows
            runs.append([d_in for d_in, _ in rows])
    return fit(pairs, used, len(prompts), runs)
