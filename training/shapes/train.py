"""Train the shapes model from scratch: the VAE, then the DiT and text encoder together.

Run from the repository root (needs diffusers and transformers, the test-only references):

    python -m training.shapes.train --out out/shapes

Seeded: the same arguments on the same hardware and software give the same weights (up to
non-deterministic GPU kernels). By default the number of DiT steps is fitted to --budget-seconds
(one GPU lease) and printed; --dit-steps N with that N reruns the same training.
training/shapes/README.md records the recipe, time and hardware of each model.

The DiT objective matches how diffusers' ZImagePipeline samples: latents x0 = (z - shift) *
scale, noisy x = (1 - sigma) * x0 + sigma * noise, the model gets t = 1 - sigma (the pipeline's
(1000 - timestep) / 1000) and must output x0 - noise (the pipeline uses velocity = -output).
Caption features are the text encoder's hidden_states[-2] with padding rows dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.shapes import data, fast_dit, model as model_mod, tokenizer as tokenizer_mod
from training.shapes.check import score, summarize
from training.shapes.world import heldout_specs

# The sigmas of an 8-step run with shift 3 (zimage-reference.md): half of the training sigmas
# are drawn from these, half from the shifted uniform distribution the scheduler implies.
EIGHT_STEP_SIGMAS = (1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


WARMUP = 200  # DiT warm-up steps


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
        with torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample.float()
        kl = post.kl().mean()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or step == args.vae_steps - 1:
            log(f"vae step {step} loss {loss.item():.4f} kl {kl.item():.1f} ({time.time() - start:.0f}s)")
    vae.eval()


@torch.no_grad()
def latent_stats(vae, args, device) -> tuple[float, float]:
    """shift_factor = mean, scaling_factor = 1/std of the VAE latents over fresh images."""
    zs = []
    for i in range(8):
        _, x = data.batch(args.seed + 2, i, 256, device)
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
    out = te.model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
    return out.hidden_states[-2], lens


def sample_sigmas(n: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=gen)
    shifted = 3 * u / (1 + 2 * u)
    grid = torch.tensor(EIGHT_STEP_SIGMAS)[torch.randint(0, len(EIGHT_STEP_SIGMAS), (n,), generator=gen)]
    return torch.where(torch.rand(n, generator=gen) < 0.5, grid, shifted)


def ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    torch._foreach_lerp_(ema, params, 1 - decay)


def fit_steps(args, step_seconds: float, elapsed: float) -> int:
    """DiT steps that end training --reserve-seconds before --budget-seconds (the GPU lease)."""
    left = args.budget_seconds - args.reserve_seconds - elapsed
    return max(PROBE_STEPS, min(args.max_dit_steps, PROBE_STEPS + int(left / step_seconds)))


PROBE_STEPS = 30  # steps timed before --dit-steps is fitted; fewer than the warm-up, whose
# learning rates do not depend on the total, so a rerun with the fitted total is the same run


def train_dit(bpe, te, dit, vae, shift, scale, args, device, t0: float) -> int:
    """Trains the DiT and text encoder; returns the number of steps."""
    params = list(dit.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(args.seed + 3)
    dit.train(), te.train()
    start = time.time()
    total = args.dit_steps or args.max_dit_steps
    step = 0
    while step < total:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args.lr, WARMUP)
        captions, x = data.batch(args.seed, step, args.batch, device)
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
            x0 = ((vae.encode(x).latent_dist.sample().float() - shift) * scale)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        sigma = sample_sigmas(len(captions), gen).to(device)[:, None, None, None]
        xt = (1 - sigma) * x0 + sigma * noise
        t = 1 - sigma.flatten()
        with torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
            caps, lens = encode_captions(bpe, te, captions, device)
            pred = fast_dit.forward(dit, xt, t, caps, lens).float()
        loss = F.mse_loss(pred, x0 - noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_update(ema, [p.detach() for p in params], min(args.ema, (1 + step) / (10 + step)))
        if step % 100 == 0 or step == total - 1:
            log(f"dit step {step}/{total} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
        if step == 0:
            synchronize(device)
            probe = time.time()
        if not args.dit_steps and step == PROBE_STEPS:
            synchronize(device)
            step_seconds = (time.time() - probe) / PROBE_STEPS
            total = fit_steps(args, step_seconds, time.time() - t0)
            log(f"dit: {step_seconds:.3f} s/step, {total} steps fit the budget ({args.budget_seconds:.0f}s)")
        step += 1
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    dit.eval(), te.eval()
    return total


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def figures(images: list[np.ndarray], specs) -> dict:
    """The checker's five scores over all held-out prompts and per group, and the images with
    stray pixels (specks)."""
    scores = [score(im, s) for im, s in zip(images, specs)]
    groups = {"all": range(len(specs)), "singles": range(120), "counts": range(120, 140), "pairs": range(140, 160)}
    out = {name: summarize([scores[i] for i in idx]) for name, idx in groups.items()}
    out["images_with_stray_pixels"] = sum(s.stray_pixels > 0 for s in scores)
    return out


@torch.no_grad()
def check_vae(vae, device: str) -> dict:
    """The held-out scenes drawn ideally, then through the VAE and back: what the DiT can at best
    reach (a VAE that cannot draw a small star makes a DiT that cannot either)."""
    specs = heldout_specs()
    x = data.render(specs, device)
    rec = torch.cat([vae.decode(vae.encode(x[i:i + 40]).latent_dist.mode()).sample for i in range(0, len(x), 40)])
    return figures(list(data.to_uint8(rec).cpu().numpy()), specs)


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
    rows = [images[r * 8:(r + 1) * 8] for r in (0, 1, 15, 16, 17, 18, 19)]  # singles, counts, pairs
    from PIL import Image

    Image.fromarray(np.concatenate([np.concatenate(r, axis=1) for r in rows])).save(out / f"heldout-grid-{steps}.png")
    return figures(images, specs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument("--vae-batch", type=int, default=64)
    parser.add_argument("--vae-lr", type=float, default=5e-4)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--dit-steps", type=int, default=None,
                        help="default: as many as fit --budget-seconds (timed over the first steps)")
    parser.add_argument("--max-dit-steps", type=int, default=6000)
    parser.add_argument("--budget-seconds", type=float, default=480.0,
                        help="the whole run, training, evaluation and saving (a GPU lease)")
    parser.add_argument("--reserve-seconds", type=float, default=60.0,
                        help="what the budget keeps for the evaluation and saving after training")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--eval-steps", type=int, nargs="*", default=[8])
    args = parser.parse_args()

    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    hardware = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    log(f"device {hardware}, torch {torch.__version__}, args {vars(args)}")
    t0 = time.time()

    from transformers import AutoTokenizer

    bpe = tokenizer_mod.build()
    tok_dir = args.out / "tokenizer"
    tokenizer_mod.save(bpe, tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    check_template(tok)
    probe = TEMPLATE.format("two small yellow squares on a black background")
    assert bpe.encode(probe).ids == tok(probe).input_ids
    vae = model_mod.build_vae().to(device)
    te = model_mod.build_text_encoder(len(tok)).to(device)
    dit = model_mod.build_transformer().to(device)
    for name, m in (("vae", vae), ("text_encoder", te), ("transformer", dit)):
        log(f"{name}: {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M parameters")

    train_vae(vae, args, device)
    t_vae = time.time() - t0
    shift, scale = latent_stats(vae, args, device)
    vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(scale, 4))
    log(f"vae done in {t_vae:.0f}s; latent shift {shift:.4f} scale {scale:.4f}")
    for p in vae.parameters():
        p.requires_grad_(False)
    vae_check = check_vae(vae, device)
    log(f"held-out scenes through the VAE: {vae_check}")

    dit_steps = train_dit(bpe, te, dit, vae, vae.config.shift_factor, vae.config.scaling_factor, args, device, t0)
    t_total = time.time() - t0
    log(f"training done in {t_total:.0f}s ({dit_steps} DiT steps)")

    model_dir = args.out / "model"
    model_mod.save(model_dir, bpe, te.float(), dit.float(), vae.float(), torch.bfloat16)
    info = {"hardware": hardware, "torch": torch.__version__, "vae_seconds": round(t_vae),
            "total_seconds": round(t_total), "dit_steps": dit_steps, "vae_heldout": vae_check,
            "args": {k: str(v) for k, v in vars(args).items()}}
    for steps in args.eval_steps:
        info[f"heldout_{steps}_steps"] = evaluate(model_dir, device, args.out, steps)
        log(f"held-out, {steps} steps: {info[f'heldout_{steps}_steps']}")
    info["run_seconds"] = round(time.time() - t0)
    (args.out / "train-info.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"done in {info['run_seconds']}s; reproduce with --dit-steps {dit_steps}")


if __name__ == "__main__":
    main()
