"""Train the shapes model from scratch: the VAE, then the DiT and text encoder together.

Run from the repository root (needs diffusers and transformers, the test-only references):

    python -m training.shapes.train --out out/shapes                      # one call
    python -m training.shapes.train --out out/shapes --dit-steps 20000    # first of several calls
    python -m training.shapes.train --out out/shapes --resume out/shapes/ckpt   # the next ones
    python -m training.shapes.train --out out/v --vae-only --edge-weight 10  # a VAE alone, scored
    python -m training.shapes.train --out out/shapes --vae-from out/v/vae --dit-steps 16000  # a DiT on it

A call trains until --budget-seconds would run out (the step time is measured over windows of
steps, so it is the steady-state time), then writes a checkpoint (checkpoint.py) to
--checkpoint; the call that reaches the last step also saves and evaluates the model. By default
(no --dit-steps) the number of DiT steps is fitted to one call's budget at the end of the warm-up
and printed; --dit-steps N with that N reruns the same training.

Seeded: the data of step k is a function of (seed, k), and the checkpoint keeps the step, the
RNG states, the AdamW moments and the EMA, so a resumed run computes what one uninterrupted run
computes, to the bit on the CPU (tests/training/test_shapes_resume.py) and, on a GPU, as exactly
as a rerun reproduces itself (up to non-deterministic kernels). That exact state (full.pt) is too
large to travel between machines; a resume without it starts from the bf16 weights, with fresh
AdamW moments and EMA and the learning rate re-warmed (REWARM steps).
training/shapes/README.md records the recipe, time and hardware of each model.

The DiT objective matches how diffusers' ZImagePipeline samples: latents x0 = (z - shift) *
scale, noisy x = (1 - sigma) * x0 + sigma * noise, the model gets t = 1 - sigma (the pipeline's
(1000 - timestep) / 1000) and must output x0 - noise (the pipeline uses velocity = -output).
Caption features are the text encoder's hidden_states[-2] with padding rows dropped.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.shapes import checkpoint, data, fast_dit, model as model_mod, tokenizer as tokenizer_mod
from training.shapes.check import figures, score
from training.shapes.score import heldout_grid
from training.shapes.world import heldout_specs

# The sigmas of an 8-step run with shift 3 (zimage-reference.md): half of the training sigmas
# are drawn from these, half from the shifted uniform distribution the scheduler implies.
EIGHT_STEP_SIGMAS = (1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3)
WORST_PIXELS = 64  # the decoder's refinement weighs each image's this many worst interior pixels
LATENT_STATS_IMAGES = (8, 256)  # batches and images in each: the VAE's latent shift and scale
WINDOW = 10  # DiT steps between two clock readings (and GPU synchronizations)
REWARM = 100  # steps of learning-rate warm-up after a resume from the bf16 weights (AdamW's
# second moments, beta2 0.99, settle in about that many)
# What a resumed run takes from its checkpoint: the arguments that make the training what it is.
VAE_RECIPE = ("seed", "vae_steps", "vae_batch", "vae_lr", "kl_weight", "edge_weight", "vae_channels", "vae_layers")
RECIPE = VAE_RECIPE + ("batch", "lr", "dit_warmup", "ema")  # --decoder-*, --worst-weight: the last call's


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(vae, args, device) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    vae.train()
    start = time.time()
    for step in range(args.vae_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.vae_steps, args.vae_lr, 100)
        _, x = data.batch(args.seed + 1, step, args.vae_batch, device)
        loss, kl = vae_loss(vae, x, args, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or step == args.vae_steps - 1:
            log(f"vae step {step} loss {loss.item():.4f} kl {kl.item():.1f} ({time.time() - start:.0f}s)")
    vae.eval()


def vae_loss(vae, x: torch.Tensor, args, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 + L2 of the reconstruction (edges weighed 1 + --edge-weight) + --kl-weight KL; and the KL."""
    with torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample.float()
    kl = post.kl().mean()
    err = (rec - x).abs()
    return ((err + err * err) * edge_weights(x, args.edge_weight)).mean() + args.kl_weight * kl, kl


def refine_decoder(vae, args, device) -> None:
    """Trains the VAE's decoder alone for --decoder-steps, the encoder frozen, so the latents (and
    the DiT trained on them) stay what they are. Its loss adds to the VAE's the mean of each
    image's WORST_PIXELS largest errors among the pixels at least 3 from an edge: the few-pixel
    marks a VAE leaves inside its shapes (specks) cost little in a mean over 16,384 pixels, but
    they are what a person sees first. Its own data and RNG (forked): nothing else changes."""
    if not args.decoder_steps:
        return
    decoder = [m for m in (vae.decoder, vae.post_quant_conv) if m is not None]
    params = [p for m in decoder for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, betas=(0.9, 0.99), weight_decay=0.0)
    start = time.time()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []):
        for p in params:
            p.requires_grad_(True)
        for m in decoder:
            m.train()
        for step in range(args.decoder_steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, args.decoder_steps, args.decoder_lr, 50)
            _, x = data.batch(args.seed + 4, step, args.vae_batch, device)
            with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
                z = vae.encode(x).latent_dist.mode()
            with torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
                rec = vae.decode(z).sample.float()
            err = (rec - x).abs()
            err = err + err * err
            worst = (err.sum(1, keepdim=True) * interior(x)).flatten(1).topk(WORST_PIXELS, dim=1).values
            loss = (err * edge_weights(x, args.edge_weight)).mean() + args.worst_weight * worst.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % 200 == 0 or step == args.decoder_steps - 1:
                log(f"decoder step {step} loss {loss.item():.4f} worst {worst.mean().item():.4f} "
                    f"({time.time() - start:.0f}s)")
    vae.eval()
    with torch.no_grad():
        for p in params:
            p.requires_grad_(False)
            p.copy_(p.to(torch.bfloat16))  # as it ships


def refine_if_better(vae, args, device, before: dict) -> dict:
    """refine_decoder, kept only if refinement_helps against `before` (check_vae's figures of the
    VAE as it is); returns vae_heldout_refined (the refined decoder's figures) and
    decoder_refined (whether the VAE now has it)."""
    weights = {k: v.clone() for k, v in vae.state_dict().items()}
    refine_decoder(vae, args, device)
    after = check_vae(vae, device)
    log(f"held-out scenes through the refined VAE: {after}")
    kept = refinement_helps(before, after)
    if not kept:
        vae.load_state_dict(weights)
        log("the refined decoder is not better: the VAE keeps the decoder it had")
    return {"vae_heldout_refined": after, "decoder_refined": kept}


def refinement_helps(before: dict, after: dict) -> bool:
    """Whether a refined decoder ships: fewer artefacts (images with stray pixels, blemish pixels
    per image: one fewer, the other no more), and kind and count through the VAE no worse
    (check_vae's figures before and after), so a setting not tried on this VAE before cannot make
    the model worse than the decoder it had."""
    kept = all(after["all"][k] >= before["all"][k] for k in ("kind", "count"))
    artefacts = [(f["images_with_stray_pixels"], f["blemish_pixels_per_image"]) for f in (before, after)]
    return kept and all(a <= b for a, b in zip(artefacts[1], artefacts[0])) and artefacts[1] != artefacts[0]


def interior(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): 1 where a pixel of `x` is at least 3 pixels from any edge, else 0."""
    near = F.max_pool2d(edge_weights(x, 1.0) - 1, 3, stride=1, padding=1)  # within 2 of an edge
    return (near == 0).float()


def edge_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, 1, H, W): 1 + `weight` within a pixel of an edge of `x`, 1 elsewhere. Edges are a small
    part of an image but all of a shape's kind (a small star's points) and where specks appear."""
    if not weight:
        return torch.ones_like(x[:, :1])
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().amax(1, keepdim=True)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().amax(1, keepdim=True)
    edge = (F.pad(dx, (0, 1)) + F.pad(dy, (0, 0, 0, 1)) > 0.02).float()
    return 1.0 + weight * F.max_pool2d(edge, 3, stride=1, padding=1)


@torch.no_grad()
def latent_stats(vae, args, device) -> tuple[float, float]:
    """shift_factor = mean, scaling_factor = 1/std of the VAE latents over fresh images."""
    zs = []
    batches, n = LATENT_STATS_IMAGES
    for i in range(batches):
        _, x = data.batch(args.seed + 2, i, n, device)
        zs.append(vae.encode(x).latent_dist.sample().float())
    z = torch.cat(zs)
    return float(z.mean()), float(1.0 / z.std())


TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def check_template(tok) -> None:
    """Our f-string is what the pipeline's apply_chat_template renders."""
    caption = "a large red circle at the top left on a blue background"
    rendered = tok.apply_chat_template([{"role": "user", "content": caption}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=True)
    assert rendered == TEMPLATE.format(caption), rendered


def encode_captions(bpe, te, captions: list[str], device) -> tuple[torch.Tensor, list[int]]:
    """hidden_states[-2] of the text encoder (B, L, D) and each caption's token count."""
    encs = bpe.encode_batch([TEMPLATE.format(c) for c in captions])
    lens = [len(e.ids) for e in encs]
    pad = bpe.token_to_id("<|endoftext|>")
    ids = torch.full((len(encs), max(lens)), pad, dtype=torch.long)
    for i, e in enumerate(encs):
        ids[i, : lens[i]] = torch.tensor(e.ids)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor(lens)[:, None]).long()
    out = te.model(input_ids=data.on(device, ids), attention_mask=data.on(device, mask), output_hidden_states=True)
    return out.hidden_states[-2], lens


def sample_sigmas(n: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=gen, device=gen.device)
    shifted = 3 * u / (1 + 2 * u)
    index = torch.randint(0, len(EIGHT_STEP_SIGMAS), (n,), generator=gen, device=gen.device)
    grid = data.on(gen.device, list(EIGHT_STEP_SIGMAS))[index]
    return torch.where(torch.rand(n, generator=gen, device=gen.device) < 0.5, grid, shifted)


def ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    torch._foreach_lerp_(ema, params, 1 - decay)


def compile_blocks(dit) -> None:
    """torch.compile each DiT block (regional: one graph per block kind and mask variant). The
    weights and the checkpoint are the same; only the kernels differ."""
    for block in [*dit.noise_refiner, *dit.context_refiner, *dit.layers]:
        block.compile(dynamic=False)


def trained_params(dit, te) -> list[tuple[str, torch.nn.Parameter]]:
    """The DiT's and the text encoder's parameters, named as the checkpoint names them."""
    return [(f"dit.{n}", p) for n, p in dit.named_parameters()] + [(f"te.{n}", p) for n, p in te.named_parameters()]


@dataclass
class Run:
    """The DiT training's progress: what the loop carries from step to step and a checkpoint
    carries from call to call."""

    step: int
    total: int
    fitted: bool  # the total is fixed (given, fitted to the budget, or the checkpoint's)
    rewarm_from: int | None  # the step of the last resume from bf16 weights, if any
    ema: list[torch.Tensor]
    calls: list[dict] = field(default_factory=list)

    def lr(self, args) -> float:
        lr = lr_at(self.step, self.total, args.lr, args.dit_warmup)
        if self.rewarm_from is not None and self.step < self.rewarm_from + REWARM:
            lr *= (self.step - self.rewarm_from + 1) / REWARM
        return lr

    def ema_decay(self, args) -> float:
        k = self.step - (self.rewarm_from or 0)  # the EMA restarts with the weights after a bf16 resume
        return min(args.ema, (1 + k) / (10 + k))


class StepClock:
    """Seconds per DiT step, measured over windows of WINDOW steps between GPU synchronizations,
    so that a decision uses the recent, steady-state step time and not the first, slower steps."""

    def __init__(self, device: str) -> None:
        self.device, self.windows, self.mark = device, [], None

    def tick(self, step: int) -> None:
        synchronize(self.device)
        now = time.time()
        if self.mark is not None and step > self.mark[0]:
            self.windows.append((step, (now - self.mark[1]) / (step - self.mark[0])))
        self.mark = (step, now)

    def seconds(self, since: int = 0) -> float | None:
        """The median over the last five windows that start at or after step `since`."""
        recent = [s for end, s in self.windows if end - WINDOW >= since][-5:]
        return statistics.median(recent) if recent else None


def fit_total(run: Run, clock: StepClock, args, t0: float) -> None:
    """One call's whole training: as many steps as end --reserve-seconds (and --save-seconds, a
    margin for slower steps later) before the budget, timed over the second half of the warm-up
    (whose learning rates do not depend on the total, so a rerun with --dit-steps N is the same
    run)."""
    step_seconds = clock.seconds(since=args.dit_warmup // 2) or clock.seconds()
    if step_seconds is None:
        log(f"dit: no step timed by step {run.step}; the total stays {run.total}")
        return
    left = t0 + args.budget_seconds - args.reserve_seconds - args.save_seconds - time.time()
    run.total = max(run.step, min(args.max_dit_steps, run.step + int(left / step_seconds)))
    run.fitted = True
    log(f"dit: {step_seconds:.3f} s/step, {run.total} steps fit the budget ({args.budget_seconds:.0f}s)")


def time_left(run: Run, clock: StepClock, args, t0: float) -> bool:
    """Whether this call runs another window: it goes on to the end if the end leaves
    --reserve-seconds for saving and evaluating; otherwise it stops while --save-seconds are left
    for the checkpoint, short of the end (the evaluation is left to the next call)."""
    step_seconds = clock.seconds()
    if step_seconds is None:
        return True
    now, end = time.time(), t0 + args.budget_seconds
    if now + (run.total - run.step) * step_seconds + args.reserve_seconds <= end:
        return True
    return run.step + WINDOW < run.total and now + WINDOW * step_seconds + args.save_seconds <= end


def dit_step(run: Run, opt, named, gen, bpe, te, dit, vae, args, device) -> torch.Tensor:
    for group in opt.param_groups:
        group["lr"] = run.lr(args)
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    captions, x = data.batch(args.seed, run.step, args.batch, device)
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
        x0 = ((vae.encode(x).latent_dist.sample().float() - shift) * scale)
    noise = torch.randn(x0.shape, generator=gen, device=device)
    sigma = sample_sigmas(len(captions), gen)[:, None, None, None]
    xt = (1 - sigma) * x0 + sigma * noise
    t = 1 - sigma.flatten()
    with torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
        caps, lens = encode_captions(bpe, te, captions, device)
        pred = fast_dit.forward(dit, xt, t, caps, lens).float()
    loss = F.mse_loss(pred, x0 - noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for _, p in named]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    ema_update(run.ema, [p.detach() for p in params], run.ema_decay(args))
    return loss


def train_dit(run: Run, opt, named, gen, bpe, te, dit, vae, args, device, t0: float) -> dict:
    """Trains the DiT and text encoder from run.step until the end or the budget; returns this
    call's line for the checkpoint's history."""
    dit.train(), te.train()
    start, started = run.step, time.time()
    clock = StepClock(device)
    while run.step < run.total and run.step - start < (args.call_steps or math.inf):
        if run.step % WINDOW == 0:
            clock.tick(run.step)
        if not run.fitted and run.step == args.dit_warmup:
            fit_total(run, clock, args, t0)
        if run.step % WINDOW == 0 and run.step > start and not time_left(run, clock, args, t0):
            break
        loss = dit_step(run, opt, named, gen, bpe, te, dit, vae, args, device)
        if run.step % 100 == 0 or run.step == run.total - 1:
            log(f"dit step {run.step}/{run.total} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
        run.step += 1
    synchronize(device)
    seconds = time.time() - started
    log(f"dit: steps {start} to {run.step} of {run.total} in {seconds:.0f}s "
        f"({clock.seconds() or seconds / max(1, run.step - start):.3f} s/step)")
    dit.eval(), te.eval()
    return {"from": start, "to": run.step, "seconds": round(seconds, 1),
            "step_seconds": round(clock.seconds() or 0, 4)}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rng_states(gen: torch.Generator, device: str) -> dict[str, str]:
    """The training noise generator's and torch's global states (the VAE's latent sampling draws
    from the latter), base64, for state.json."""
    states = {"noise": gen.get_state(), "torch": torch.get_rng_state()}
    if device == "cuda":
        states["cuda"] = torch.cuda.get_rng_state()
    return {k: base64.b64encode(v.numpy().tobytes()).decode() for k, v in states.items()}


def set_rng_states(states: dict[str, str], gen: torch.Generator, device: str) -> None:
    def tensor(name: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(states[name])), dtype=torch.uint8)

    gen.set_state(tensor("noise"))
    torch.set_rng_state(tensor("torch"))
    if device == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(tensor("cuda"))


@torch.no_grad()
def check_vae(vae, device: str) -> dict:
    """The held-out scenes drawn ideally, then through the VAE and back: what the DiT can at best
    reach (a VAE that cannot draw a small star makes a DiT that cannot either)."""
    specs = heldout_specs()
    x = data.render(specs, device)
    posts = [vae.encode(x[i:i + 40]).latent_dist for i in range(0, len(x), 40)]
    rec = torch.cat([vae.decode(post.mode()).sample for post in posts])
    images = list(data.to_uint8(rec).cpu().numpy())
    out = figures(images, specs)
    out["latents"] = latent_figures(torch.cat([p.mode() for p in posts]), torch.cat([p.std for p in posts]))
    by_kind: dict[str, list[bool]] = {}
    for image, spec in zip(images[:120], specs[:120]):  # the singles: kind kept, per kind and size
        shape = spec.shapes[0]
        by_kind.setdefault(f"{shape.size} {shape.kind}", []).append(score(image, spec).kind)
    out["singles_kind"] = {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_kind.items())}
    return out


def latent_figures(mode: torch.Tensor, std: torch.Tensor) -> dict:
    """How the VAE's latents (B, C, h, w) carry an image: the spread of the posterior means against
    the posterior's own noise, and the peak of the per-position latent norm over its median (a VAE
    that packs a shape into one extreme latent position decodes a speck there)."""
    norm = mode.float().norm(dim=1).flatten(1)  # (B, h*w)
    peak = norm.amax(1) / norm.median(1).values
    return {"mean_std": round(float(mode.std()), 3), "posterior_std": round(float(std.mean()), 3),
            "peak_over_median": round(float(peak.median()), 1), "peak_over_median_max": round(float(peak.max()), 1)}


def evaluate(model_dir: Path, device: str, out: Path, steps: int) -> dict:
    """Held-out score with diffusers' ZImagePipeline (the reference the runtime matches)."""
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(model_dir, dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    specs = heldout_specs()
    images = []
    for i in range(0, len(specs), 40):
        chunk = specs[i:i + 40]
        gens = [torch.Generator("cpu").manual_seed(i + k) for k in range(len(chunk))]
        result = pipe([s.caption for s in chunk], height=128, width=128, num_inference_steps=steps,
                      guidance_scale=0.0, generator=gens, output_type="np")
        images += list((result.images * 255).round().astype(np.uint8))
    heldout_grid(images).save(out / f"heldout-grid-{steps}.png")
    return figures(images, specs)


def resume_run(resumed, args, named, opt, gen, device) -> Run:
    """The Run of a checkpoint: exact with its full.pt, else from its bf16 weights."""
    state, weights, full = resumed
    total = args.dit_steps or state["total"]
    if total != state["total"]:
        log(f"dit: the schedule's total changes from {state['total']} to {total} at step {state['step']}")
    if total < state["step"]:
        raise SystemExit(f"--dit-steps {total} is before the checkpoint's step {state['step']}")
    params = [p for _, p in named]
    with torch.no_grad():
        source = full["params"] if full else weights
        for name, p in named:
            p.copy_(source[name])
    if full:
        opt.load_state_dict(full["opt"])
        ema = [full["ema"][name].to(device) for name, _ in named]
        rewarm_from = state["rewarm_from"]
        log(f"resuming exactly at step {state['step']} (this checkpoint's full.pt: weights, EMA, AdamW moments)")
    else:
        ema = [p.detach().clone() for p in params]
        rewarm_from = state["step"]
        log(f"resuming at step {state['step']} from the bf16 weights, NOT exactly (no full.pt of this "
            f"checkpoint here): fresh AdamW moments and EMA, learning rate re-warmed over {REWARM} steps")
    set_rng_states(state["rng"], gen, device)
    return Run(state["step"], total, True, rewarm_from, ema, state["calls"])


def take_recipe(args, parser: argparse.ArgumentParser, state: dict, names=RECIPE) -> None:
    """A resumed run keeps its checkpoint's recipe (a run with --vae-from, that VAE's); a flag given
    with another value is an error."""
    for name in names:
        if name not in state["recipe"]:
            continue  # a field newer than the checkpoint is given
        given, stored = getattr(args, name), state["recipe"][name]
        if given != parser.get_default(name) and given != stored:
            raise SystemExit(f"--{name.replace('_', '-')} {given} differs from the checkpoint's {stored}; "
                             "a resumed run keeps its recipe")
        setattr(args, name, stored)


def prepare_vae(vae, args, device, resumed) -> dict:
    """Trains the VAE (or takes the checkpoint's), sets its latent shift and scale and freezes it;
    returns the checkpoint's VAE fields. The trained weights are rounded to bf16 at once: the DiT
    then learns the latents of the VAE that ships (saved in bf16) and a checkpoint keeps it
    exactly in half the bytes."""
    if resumed:  # a DiT checkpoint, or a VAE's (--vae-from)
        state, weights, _ = resumed
        vae.load_state_dict({k[len("vae."):]: v.float() for k, v in weights.items() if k.startswith("vae.")})
        vae.register_to_config(shift_factor=state["shift"], scaling_factor=state["scale"])
        vae_fields = {k: state[k] for k in ("shift", "scale", "vae_seconds", "vae_heldout")}
    else:
        started = time.time()
        train_vae(vae, args, device)
        with torch.no_grad():
            for p in vae.parameters():
                p.copy_(p.to(torch.bfloat16))
        shift, scale = latent_stats(vae, args, device)
        vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(scale, 4))
        vae_fields = {"shift": vae.config.shift_factor, "scale": vae.config.scaling_factor,
                      "vae_seconds": round(time.time() - started), "vae_heldout": check_vae(vae, device)}
        log(f"vae done in {vae_fields['vae_seconds']}s; latent shift {shift:.4f} scale {scale:.4f}")
        log(f"held-out scenes through the VAE: {vae_fields['vae_heldout']}")
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    return vae_fields


def save_checkpoint(directory: Path, run: Run, opt, named, gen, vae, vae_fields: dict, args, device) -> None:
    state = dict(step=run.step, total=run.total, rewarm_from=run.rewarm_from, calls=run.calls,
                 recipe={k: getattr(args, k) for k in RECIPE}, rng=rng_states(gen, device), **vae_fields)
    weights = {name: p for name, p in named} | {f"vae.{k}": v for k, v in vae.state_dict().items()}
    full = {"params": {name: p.detach().cpu() for name, p in named},
            "ema": {name: e.cpu() for (name, _), e in zip(named, run.ema)}, "opt": opt.state_dict()}
    started = time.time()
    checkpoint.write(directory, state, weights, full)
    size = sum(f.stat().st_size for f in directory.iterdir() if f.name != checkpoint.FULL)
    log(f"checkpoint at step {run.step} in {directory} ({size / 2**20:.1f} MiB without full.pt, "
        f"{time.time() - started:.0f}s)")


def finish(run: Run, named, bpe, te, dit, vae, vae_fields: dict, args, device, hardware: str, t0: float) -> None:
    """The EMA weights become the model: saved, evaluated, described in train-info.json."""
    with torch.no_grad():
        for (_, p), e in zip(named, run.ema):
            p.copy_(e)
    if args.decoder_steps:
        vae_fields = {**vae_fields, **refine_if_better(vae, args, device, vae_fields["vae_heldout"])}
    model_dir = args.out / "model"
    model_mod.save(model_dir, bpe, te.float(), dit.float(), vae.float(), torch.bfloat16)
    info = {"hardware": hardware, "torch": torch.__version__, "vae_seconds": vae_fields["vae_seconds"],
            "dit_seconds": round(sum(c["seconds"] for c in run.calls)), "dit_steps": run.total,
            "calls": run.calls, "vae_heldout": vae_fields["vae_heldout"],
            "vae_heldout_refined": vae_fields.get("vae_heldout_refined"),
            "decoder_refined": vae_fields.get("decoder_refined", False),
            "args": {k: str(v) for k, v in vars(args).items()}}
    for steps in args.eval_steps:
        info[f"heldout_{steps}_steps"] = evaluate(model_dir, device, args.out, steps)
        log(f"held-out, {steps} steps: {info[f'heldout_{steps}_steps']}")
    info["run_seconds"] = round(time.time() - t0)
    (args.out / "train-info.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"done: {run.total} DiT steps in {len(run.calls)} call(s); reproduce with --dit-steps {run.total}")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="where this call writes its checkpoint (default: OUT/ckpt)")
    parser.add_argument("--resume", type=Path, default=None, help="a checkpoint directory to go on from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument("--vae-batch", type=int, default=64)
    parser.add_argument("--vae-lr", type=float, default=5e-4)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--edge-weight", type=float, default=0.0,
                        help="the VAE loss weighs pixels at shape edges 1 + this")
    parser.add_argument("--vae-channels", type=int, nargs="+", default=model_mod.VAE["block_out_channels"],
                        help="the VAE's channels per block (their number sets the downsampling)")
    parser.add_argument("--vae-layers", type=int, default=model_mod.VAE["layers_per_block"])
    parser.add_argument("--decoder-steps", type=int, default=0,
                        help="after the DiT, the VAE decoder alone is refined this many steps (refine_decoder)")
    parser.add_argument("--decoder-lr", type=float, default=1e-4)
    parser.add_argument("--worst-weight", type=float, default=1.0,
                        help="the decoder's refinement weighs each image's worst interior pixels this much")
    parser.add_argument("--vae-only", action="store_true",
                        help="train and score the VAE only (OUT/vae-info.json), to try a VAE recipe")
    parser.add_argument("--vae-from", type=Path, default=None,
                        help="the VAE a --vae-only run wrote (OUT/vae), instead of training one")
    parser.add_argument("--dit-steps", type=int, default=None,
                        help="the schedule's total (default: as many as fit this call's budget, fitted at the "
                             "end of the warm-up; on --resume: the checkpoint's)")
    parser.add_argument("--max-dit-steps", type=int, default=6000)
    parser.add_argument("--dit-warmup", type=int, default=200)
    parser.add_argument("--call-steps", type=int, default=None, help="at most this many DiT steps in this call")
    parser.add_argument("--budget-seconds", type=float, default=480.0,
                        help="this call, from --started-at: training, checkpoint, evaluation and saving")
    parser.add_argument("--started-at", type=float, default=None,
                        help="when the call began (seconds since the epoch; default: now)")
    parser.add_argument("--reserve-seconds", type=float, default=60.0,
                        help="what the budget keeps for the evaluation and saving after the last step")
    parser.add_argument("--save-seconds", type=float, default=20.0,
                        help="what the budget keeps for the checkpoint of a call that stops short of the end")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--eval-steps", type=int, nargs="*", default=[8])
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT's blocks (speed only)")
    args = parser.parse_args(argv)
    args.checkpoint = args.checkpoint or args.out / "ckpt"
    return args, parser


def main(argv: list[str] | None = None) -> None:
    args, parser = parse_args(argv)
    t0 = args.started_at or time.time()
    resumed = checkpoint.read(args.resume, also=args.checkpoint) if args.resume else None
    if resumed:
        take_recipe(args, parser, resumed[0])
    vae_from = checkpoint.read(args.vae_from) if args.vae_from and not resumed else None
    if vae_from:
        take_recipe(args, parser, vae_from[0], VAE_RECIPE)
    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # the VAE's convolutions: one shape for the whole run
    hardware = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    log(f"device {hardware}, torch {torch.__version__}, args {vars(args)}")

    bpe = build_tokenizer(args.out / "tokenizer")
    vae = model_mod.build_vae(args.vae_channels, args.vae_layers).to(device)
    te = model_mod.build_text_encoder(bpe.get_vocab_size()).to(device)
    dit = model_mod.build_transformer().to(device)
    for name, m in (("vae", vae), ("text_encoder", te), ("transformer", dit)):
        log(f"{name}: {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M parameters")
    if args.compile:
        compile_blocks(dit)
    vae_fields = prepare_vae(vae, args, device, resumed or vae_from)
    if args.vae_only:
        info = {"hardware": hardware, "vae_parameters": sum(p.numel() for p in vae.parameters()),
                "args": {k: str(v) for k, v in vars(args).items()}, **vae_fields}
        (args.out / "vae-info.json").write_text(json.dumps(info, indent=2) + "\n")
        checkpoint.write(args.out / "vae", dict(recipe={k: getattr(args, k) for k in VAE_RECIPE}, **vae_fields),
                         {f"vae.{k}": v for k, v in vae.state_dict().items()}, None)
        log(f"the VAE is in {args.out / 'vae'}: train the DiT on it with --vae-from")
        if args.decoder_steps:  # what the end of a DiT training on it will make of its decoder
            refine_decoder(vae, args, device)
            info["vae_heldout_refined"] = check_vae(vae, device)
            (args.out / "vae-info.json").write_text(json.dumps(info, indent=2) + "\n")
            log(f"held-out scenes through the refined VAE: {info['vae_heldout_refined']}")
        return

    named = trained_params(dit, te)
    opt = torch.optim.AdamW([p for _, p in named], lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator(device).manual_seed(args.seed + 3)  # on the GPU: 29 ms a step on the CPU
    if resumed:
        run = resume_run(resumed, args, named, opt, gen, device)
    else:
        total = args.dit_steps or args.max_dit_steps
        run = Run(0, total, args.dit_steps is not None, None, [p.detach().clone() for _, p in named])
    call = train_dit(run, opt, named, gen, bpe, te, dit, vae, args, device, t0)
    run.calls.append({"hardware": hardware, **call, "resumed": None if not resumed else
                      "exact" if resumed[2] else "from bf16 weights"})
    save_checkpoint(args.checkpoint, run, opt, named, gen, vae, vae_fields, args, device)
    if run.step < run.total:
        log(f"stopped at step {run.step} of {run.total}; go on with --resume {args.checkpoint}")
        return
    finish(run, named, bpe, te, dit, vae, vae_fields, args, device, hardware, t0)


def build_tokenizer(tok_dir: Path):
    """The BPE tokenizer, saved and checked against what transformers loads from it."""
    from transformers import AutoTokenizer

    bpe = tokenizer_mod.build()
    tokenizer_mod.save(bpe, tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    check_template(tok)
    probe = TEMPLATE.format("two small yellow squares on a black background")
    assert bpe.encode(probe).ids == tok(probe).input_ids
    assert bpe.get_vocab_size() == len(tok)
    return bpe


if __name__ == "__main__":
    main()
