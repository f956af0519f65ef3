"""Where a shapes training step goes, on the GPU machine: the DiT step (train.dit_step) and the VAE
step timed whole, the parts of the DiT step timed alone (data, noise, VAE encode, captions, forward,
backward, optimizer), and torch.profiler's tables of both steps. Random weights: a step costs the
same trained or not.

    python -m training.shapes.profile_train --out /tmp/prof [--steps 20] [train.py arguments: --compile ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from training.shapes import data, model as model_mod, train


def timed(fn, steps: int, device: str) -> float:
    for _ in range(3):
        fn()
    train.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    train.synchronize(device)
    return (time.perf_counter() - start) / steps


def profiled(label: str, fn, device: str) -> str:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(5):
            fn()
        train.synchronize(device)
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    return f"\n{label}, 5 steps, by {key}:\n" + prof.key_averages().table(sort_by=key, row_limit=25,
                                                                          max_name_column_width=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20)
    own, rest = parser.parse_known_args()
    args, _ = train.parse_args(["--out", str(own.out), "--dit-steps", "100000", *rest])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    bpe = train.build_tokenizer(args.out / "tokenizer")
    vae = model_mod.build_vae(args.vae_channels, args.vae_layers).to(device)
    te = model_mod.build_text_encoder(bpe.get_vocab_size()).to(device)
    dit = model_mod.build_transformer().to(device)
    if args.compile:
        train.compile_blocks(dit)
    named = train.trained_params(dit, te)
    opt = torch.optim.AdamW([p for _, p in named], lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator(device).manual_seed(0)
    run = train.Run(1000, 100000, True, None, [p.detach().clone() for _, p in named])
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr)
    n = args.batch

    def vae_step():
        _, x = data.batch(1, 0, args.vae_batch, device)
        loss, _ = train.vae_loss(vae, x, args, device)
        vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        vae_opt.step()

    def dit_step():
        train.dit_step(run, opt, named, gen, bpe, te, dit, vae, args, device)

    figures = {"vae step": timed(vae_step, own.steps, device)}
    tables = [profiled("VAE step", vae_step, device)]
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    dit.train(), te.train()
    figures["dit step"] = timed(dit_step, own.steps, device)
    captions, x = data.batch(0, 0, n, device)
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
        x0 = vae.encode(x).latent_dist.sample().float()
    caps, lens = train.encode_captions(bpe, te, captions, device)
    parts = {
        "data.batch (specs + render)": lambda: data.batch(0, 0, n, device),
        "specs only (Python)": lambda: data.specs_for(0, 0, n),
        "noise": lambda: torch.randn(x0.shape, generator=gen, device=device),
        "VAE encode": lambda: torch.no_grad()(vae.encode)(x),
        "captions (tokenize + text encoder)": lambda: train.encode_captions(bpe, te, captions, device),
    }
    for label, fn in parts.items():
        with torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
            figures[label] = timed(fn, own.steps, device)

    def forward_backward():
        with torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
            pred = train.fast_dit.forward(dit, x0, torch.full((n,), 0.5, device=device), caps.detach(), lens).float()
        pred.square().mean().backward()

    figures["DiT forward + backward"] = timed(forward_backward, own.steps, device)
    figures["optimizer + EMA"] = timed(lambda: (opt.step(), train.ema_update(run.ema, [p.detach() for _, p in named], 0.998)),
                                       own.steps, device)
    for label, seconds in figures.items():
        print(f"{label:40s} {seconds * 1000:8.1f} ms", flush=True)
    tables.append(profiled("DiT step", dit_step, device))
    print("\n".join(tables))


if __name__ == "__main__":
    main()
