"""A model directory from a DiT checkpoint (checkpoint.py): to score a training on its way
(score.py), or to ship one whose last call could not save the model itself.

    python -m training.shapes.export CKPT OUT [--ema]

The weights are the checkpoint's bf16 copy of the trained weights; with --ema, the EMA weights of
the full.pt beside them (only on the machine that wrote it), as the finished training ships.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from training.shapes import checkpoint, model as model_mod, tokenizer as tokenizer_mod

DEFAULTS = Path(__file__).resolve().parents[2] / "ollimg" / "builtin" / "shapes" / "ollimg.json"


def export(ckpt: Path, out: Path, ema: bool = False) -> dict:
    """Writes the model to `out` (replaced); returns the checkpoint's state."""
    state, weights, full = checkpoint.read(ckpt)
    if ema and full is None:
        raise SystemExit(f"--ema needs the full.pt of {ckpt}'s weights beside them")
    source = {**weights, **full["ema"]} if ema else weights
    bpe = tokenizer_mod.build()
    recipe = state["recipe"]
    parts = {"dit": model_mod.build_transformer(), "te": model_mod.build_text_encoder(bpe.get_vocab_size()),
             "vae": model_mod.build_vae(recipe["vae_channels"], recipe["vae_layers"])}
    for prefix, module in parts.items():
        own = {k[len(prefix) + 1:]: v.float() for k, v in source.items() if k.startswith(prefix + ".")}
        missing, unexpected = module.load_state_dict(own, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # the text encoder's head is its tied embedding
            raise SystemExit(f"{ckpt}: {prefix} weights do not fit: missing {missing}, unexpected {unexpected}")
    parts["vae"].register_to_config(shift_factor=state["shift"], scaling_factor=state["scale"])
    shutil.rmtree(out, ignore_errors=True)
    model_mod.save(out, bpe, parts["te"], parts["dit"], parts["vae"], torch.bfloat16)
    shutil.copy(DEFAULTS, out / "ollimg.json")
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--ema", action="store_true", help="the EMA weights of the checkpoint's full.pt")
    args = parser.parse_args()
    state = export(args.ckpt, args.out, args.ema)
    print(f"step {state['step']} of {state['total']} ({'EMA' if args.ema else 'trained'} weights) in {args.out}")


if __name__ == "__main__":
    main()
