"""Refines the decoder of a trained shapes model's VAE in place, as a training's last call does
with --decoder-steps (train.refine_if_better): the encoder, and so everything the DiT learned,
unchanged; the refined decoder kept only if it draws fewer specks with kind and count kept. Then
the model is scored again with diffusers' pipeline. For a model whose training ended without the
refinement; on a GPU (about 40 s for 1000 steps on an H200; a CPU takes hours).

    python -m training.shapes.refine MODEL_DIR --decoder-steps 1000 --worst-weight 0.3 [--out DIR]

Writes OUT/refine-info.json (the VAE's held-out figures before and after, whether the refined
decoder was kept, the pipeline's held-out figures) and OUT/heldout-grid-8.png; OUT defaults to
the model directory's parent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from training.shapes import train


def refine(model_dir: Path, args: argparse.Namespace, device: str) -> dict:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model_dir / "vae", torch_dtype=torch.float32).to(device).eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    start = time.time()
    with torch.no_grad():
        before = train.check_vae(vae, device)
    train.log(f"held-out scenes through the VAE as it is: {before}")
    info = {"vae_heldout": before, **train.refine_if_better(vae, args, device, before)}
    info["refine_seconds"] = round(time.time() - start)
    if info["decoder_refined"]:
        vae.to(torch.bfloat16).save_pretrained(model_dir / "vae")  # as model.save writes it
    return info


def main(argv: list[str] | None = None) -> None:
    trained, _ = train.parse_args(["--out", "."])  # the training's defaults, kept in one place
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=trained.seed, help="the training's --seed")
    parser.add_argument("--edge-weight", type=float, required=True, help="the VAE's recipe's --edge-weight")
    parser.add_argument("--vae-batch", type=int, default=trained.vae_batch)
    parser.add_argument("--decoder-steps", type=int, required=True)
    parser.add_argument("--decoder-lr", type=float, default=trained.decoder_lr)
    parser.add_argument("--worst-weight", type=float, required=True)
    parser.add_argument("--eval-steps", type=int, nargs="*", default=trained.eval_steps)
    args = parser.parse_args(argv)
    out = args.out or args.model.parent
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    info = {"hardware": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "args": {k: str(v) for k, v in vars(args).items()}, **refine(args.model, args, device)}
    for steps in args.eval_steps:
        info[f"heldout_{steps}_steps"] = train.evaluate(args.model, device, out, steps)
        train.log(f"held-out, {steps} steps: {info[f'heldout_{steps}_steps']}")
    (out / "refine-info.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
