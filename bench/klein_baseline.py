"""GPU baseline for FLUX.2 [klein]: ollimg's torch runtime next to diffusers' Flux2KleinPipeline,
same run, same weights.

Writes a full-size FLUX.2-klein-4B model with random bf16 weights in the real layout (real configs,
sharded safetensors + index; the Qwen3-4B text encoder has the Z-Image one's layout), imports it
with `ollimg.create.create` (what `ollimg create` runs), then times per stage at 1024x1024, 4 steps,
bf16: text encode, denoise, VAE decode, PNG, and the peak GPU memory. diffusers is only the
reference here (test/bench dependency). The helpers (sharded writer, timing, table) are
bench/gpu_baseline.py's.

    python bench/klein_baseline.py --work /tmp/kbench [--runs 3] [--size 1024] [--steps 4] [--fp8]
    python bench/klein_baseline.py --work /tmp/kbench-tiny --tiny      # the same flow on CPU, tiny model

ollimg runs the distilled model with guidance 0 (bench/gpu_baseline.py's call; klein ignores it),
diffusers with its default (ignored too). A published reference for scale: SGLang serves klein 4B
at 1024x1024, 4 steps, in 375 ms end to end on one H200.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_baseline as base  # noqa: E402  (also puts the repository root and fixtures/ on sys.path)

TRANSFORMER = {  # black-forest-labs/FLUX.2-klein-4B transformer/config.json
    "_class_name": "Flux2Transformer2DModel", "_diffusers_version": "0.42.1", "attention_head_dim": 128,
    "axes_dims_rope": [32, 32, 32, 32], "eps": 1e-06, "guidance_embeds": False, "in_channels": 128,
    "joint_attention_dim": 7680, "mlp_ratio": 3.0, "num_attention_heads": 24, "num_layers": 5,
    "num_single_layers": 20, "out_channels": None, "patch_size": 1, "rope_theta": 2000,
    "timestep_guidance_channels": 256,
}
VAE = {  # AutoencoderKLFlux2's defaults are the released VAE's configuration
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "act_fn": "silu", "latent_channels": 32, "norm_num_groups": 32, "sample_size": 1024, "use_quant_conv": True,
    "use_post_quant_conv": True, "mid_block_add_attention": True, "batch_norm_eps": 1e-4,
    "batch_norm_momentum": 0.1, "patch_size": [2, 2],
}
TINY = {  # --tiny: the fixture's sizes, to try the whole flow on a CPU
    "transformer": dict(attention_head_dim=16, axes_dims_rope=[4, 4, 4, 4], in_channels=32, joint_attention_dim=144,
                        num_attention_heads=2, num_layers=2, num_single_layers=2),
    "text_encoder": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=30, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=1000),
    "vae": dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1, norm_num_groups=8, latent_channels=8),
}
NAME = "klein-random:bf16"


def write_model(out: Path, tiny: bool, device: str) -> None:
    from diffusers import AutoencoderKLFlux2
    from make_tiny_klein import SCHEDULER, model_index
    from make_tiny_zimage import make_tokenizer

    from ollimg.runtime.components.qwen3.config import Qwen3Config
    from ollimg.runtime.models.flux2.config import TransformerConfig
    from ollimg.runtime.models.flux2.weights import transformer_shapes

    transformer = {**TRANSFORMER, **(TINY["transformer"] if tiny else {})}
    text_encoder = {**base.TEXT_ENCODER, **(TINY["text_encoder"] if tiny else {})}
    vae = {**VAE, **(TINY["vae"] if tiny else {})}
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_index.json").write_text(json.dumps(model_index(distilled=True), indent=2))
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    make_tokenizer(out / "tokenizer")
    (out / "transformer").mkdir(exist_ok=True)
    (out / "transformer" / "config.json").write_text(json.dumps(transformer, indent=2))
    base.write_sharded(out / "transformer", "diffusion_pytorch_model",
                       transformer_shapes(TransformerConfig.from_json(transformer)), device)
    (out / "text_encoder").mkdir(exist_ok=True)
    (out / "text_encoder" / "config.json").write_text(json.dumps(text_encoder, indent=2))
    base.write_sharded(out / "text_encoder", "model", base.text_encoder_all_shapes(Qwen3Config.from_json(text_encoder)),
                       device)
    torch.manual_seed(0)
    AutoencoderKLFlux2(**vae).to(torch.bfloat16).save_pretrained(out / "vae")


def time_diffusers(path: Path, args, dtype: str) -> dict:
    from diffusers import Flux2KleinPipeline

    from ollimg.runtime.noise import noise

    base.reset_peak()
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    start = time.perf_counter()
    pipe = Flux2KleinPipeline.from_pretrained(path, dtype=torch_dtype).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    base.sync()
    load_s = time.perf_counter() - start
    weights_gib = base.peak_gib()
    channels, cells = pipe.transformer.config.in_channels, args.size // 16
    runs = []
    for i in range(args.runs + 1):
        base.reset_peak()
        latents = torch.from_numpy(noise(i, 1, (channels, cells, cells))).to(args.device)
        with torch.no_grad():
            t0 = time.perf_counter()
            embeds, _ = pipe.encode_prompt(base.PROMPT, device=pipe._execution_device)
            base.sync()
            t1 = time.perf_counter()
            packed = []
            pipe(prompt_embeds=embeds, height=args.size, width=args.size, num_inference_steps=args.steps,
                 latents=latents, output_type="latent",
                 callback_on_step_end=lambda p, step, t, kw: packed.append(kw["latents"]) or {})
            base.sync()
            t2 = time.perf_counter()
            z = pipe._unpack_latents_with_ids(packed[-1], pipe._prepare_latent_ids(latents).to(latents.device), cells, cells)
            mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1).to(z.dtype)
            std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(z.dtype)
            z = pipe._unpatchify_latents(z * std + mean)
            image = pipe.image_processor.postprocess(pipe.vae.decode(z, return_dict=False)[0], output_type="pil")[0]
            base.sync()
            t3 = time.perf_counter()
        t = {"text_encode": t1 - t0, "denoise": t2 - t1, "decode": t3 - t2, "png": base.png_seconds(image),
             "peak_gib": base.peak_gib()}
        if i:
            runs.append(t)
    del pipe
    base.reset_peak()
    return {"load_s": load_s, "weights_gib": weights_gib, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch dir: model dir and store go here")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (try the flow on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--fp8", action="store_true",
                        help="also import with --quantize fp8 and time it (fp8 matmul where the GPU has it)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from ollimg.create import create
    from ollimg.manifest import Store

    model_dir, store_dir = args.work / "FLUX.2-klein-4B-random", args.work / "store"
    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__, "size": args.size, "steps": args.steps, "dtype": args.dtype}
    start = time.perf_counter()
    if not (model_dir / "model_index.json").is_file():
        write_model(model_dir, args.tiny, args.device)
    results["write_s"] = time.perf_counter() - start
    start = time.perf_counter()
    model = create(Store(store_dir), NAME, model_dir)
    results["create_s"] = time.perf_counter() - start
    results["model_bytes"] = model.size
    print(f"model written in {results['write_s']:.1f}s, imported in {results['create_s']:.1f}s "
          f"({model.size / 1e9:.2f} GB)", flush=True)
    variants = [("ollimg", NAME, {})]
    if args.fp8:
        create(Store(store_dir), "klein-random:fp8", model_dir, quantize="fp8")
        variants.append(("ollimg fp8", "klein-random:fp8", {}))
    for label, name, env in variants:
        results[label] = base.time_ollimg(name, store_dir, args, args.dtype, env)
        print(base.table(results), flush=True)
    if not args.skip_diffusers:
        results["diffusers"] = time_diffusers(model_dir, args, args.dtype)
    print(json.dumps(results, indent=1))
    print(base.table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
