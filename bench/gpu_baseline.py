"""GPU baseline: ollimg's torch runtime next to diffusers' ZImagePipeline, same run, same weights.

Writes a full-size Z-Image-Turbo model with random bf16 weights in the real layout (real configs,
sharded safetensors + index), imports it with `ollimg.create.create` (what `ollimg create` runs),
then times per stage at 1024x1024, 8 steps, bf16: text encode, denoise, VAE decode, PNG; and the
peak GPU memory of each. diffusers is only the reference here (test/bench dependency).

    python bench/gpu_baseline.py --work /tmp/zbench [--runs 3] [--size 1024] [--steps 8] [--fp8] [--offload]
    python bench/gpu_baseline.py --work /tmp/zbench-tiny --tiny      # the same flow on CPU, tiny model

The tokenizer is the fixture's small BPE (the real one cannot be downloaded here), so a prompt
has a different number of tokens than with Qwen's vocabulary; the prompt below is long enough
(164 tokens templated) for text encoding to be representative.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "fixtures"))

PROMPT = ("A photo of an old fisherman mending a red net on a wooden pier at dawn, mist over the harbour, "
          "seagulls, soft golden light, film grain, 35mm, shallow depth of field, highly detailed face, "
          "weathered hands, a small lighthouse in the background, calm water reflecting the sky")

TRANSFORMER = {
    "_class_name": "ZImageTransformer2DModel", "_diffusers_version": "0.42.1", "all_f_patch_size": [1],
    "all_patch_size": [2], "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "cap_feat_dim": 2560,
    "dim": 3840, "in_channels": 16, "n_heads": 30, "n_kv_heads": 30, "n_layers": 30, "n_refiner_layers": 2,
    "norm_eps": 1e-05, "qk_norm": True, "rope_theta": 256.0, "t_scale": 1000.0,
}
TEXT_ENCODER = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2560, "initializer_range": 0.02,
    "intermediate_size": 9728, "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3",
    "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}
VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 16, "latents_mean": None, "latents_std": None,
    "layers_per_block": 2, "mid_block_add_attention": True, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False, "use_quant_conv": False,
}
TINY = {  # --tiny: the fixture's sizes, to try the whole flow on a CPU
    "transformer": dict(dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=48,
                        axes_dims=[8, 12, 12]),
    "text_encoder": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=1000),
    "vae": dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1, norm_num_groups=8),
}


def random_tensor(name: str, shape: tuple[int, ...], device: str, gen: torch.Generator) -> torch.Tensor:
    """bf16 random weights of a plausible scale: norms 1, biases 0, matrices ~ N(0, 0.5/sqrt(fan_in))."""
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    fan_in = math.prod(shape[1:])
    x = torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * (0.5 / math.sqrt(fan_in))
    return x.to(torch.bfloat16).cpu()


def write_sharded(folder: Path, stem: str, shapes: dict[str, tuple[int, ...]], device: str,
                  shard_bytes: int = 5 * 10**9) -> None:
    """Random bf16 tensors in shards `<stem>-0000i-of-0000N.safetensors` plus the index, like save_pretrained."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device).manual_seed(0)
    groups, current, size = [], [], 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        if current and size + nbytes > shard_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    groups.append(current)
    weight_map, total = {}, 0
    for i, names in enumerate(groups, 1):
        file = f"{stem}-{i:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: random_tensor(n, shapes[n], device, gen) for n in names}
        total += sum(t.numel() * 2 for t in tensors.values())
        save_file(tensors, folder / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in names})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))


def text_encoder_all_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every tensor of the Qwen3 checkpoint (`model.` prefix), the last layer and final norm included."""
    from ollimg.runtime.components.qwen3.weights import shapes

    full = shapes(config, config.num_hidden_layers)
    full["norm.weight"] = (config.hidden_size,)
    return {"model." + k: v for k, v in full.items()}


def write_model(out: Path, tiny: bool, device: str) -> None:
    from diffusers import AutoencoderKL
    from make_tiny_zimage import MODEL_INDEX, SCHEDULER, make_tokenizer

    from ollimg.runtime.components.qwen3.config import Qwen3Config as TextEncoderConfig
    from ollimg.runtime.models.zimage.config import TransformerConfig
    from ollimg.runtime.models.zimage.weights import transformer_shapes

    transformer = {**TRANSFORMER, **(TINY["transformer"] if tiny else {})}
    text_encoder = {**TEXT_ENCODER, **(TINY["text_encoder"] if tiny else {})}
    vae = {**VAE, **(TINY["vae"] if tiny else {})}
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    (out / "ollimg.json").write_text(json.dumps({"defaults": {"steps": 8, "guidance": 0.0}}))
    make_tokenizer(out / "tokenizer")
    (out / "transformer").mkdir(exist_ok=True)
    (out / "transformer" / "config.json").write_text(json.dumps(transformer, indent=2))
    write_sharded(out / "transformer", "diffusion_pytorch_model",
                  transformer_shapes(TransformerConfig.from_json(transformer)), device)
    (out / "text_encoder").mkdir(exist_ok=True)
    (out / "text_encoder" / "config.json").write_text(json.dumps(text_encoder, indent=2))
    write_sharded(out / "text_encoder", "model", text_encoder_all_shapes(TextEncoderConfig.from_json(text_encoder)),
                  device)
    torch.manual_seed(0)
    AutoencoderKL(**{k: v for k, v in vae.items()}).to(torch.bfloat16).save_pretrained(out / "vae")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def png_seconds(image) -> float:
    start = time.perf_counter()
    image.save(io.BytesIO(), "PNG")
    return time.perf_counter() - start


def time_ollimg(name: str, models_dir: Path, args, dtype: str, env: dict[str, str]) -> dict:
    """Load and time `name` with the OLLIMG_* settings in `env` (restored after)."""
    from ollimg.runtime.torch_backend import fp8_matmul

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    fp8_matmul.cache_clear()
    try:
        return _time_ollimg(name, models_dir, args, dtype)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        fp8_matmul.cache_clear()


def _time_ollimg(name: str, models_dir: Path, args, dtype: str) -> dict:
    from ollimg.runtime import load
    from ollimg.runtime.images import Parameters, encode

    reset_peak()
    start = time.perf_counter()
    pipe = load(name, backend="torch", device=args.device, dtype=dtype, models_dir=models_dir)
    sync()
    load_s = time.perf_counter() - start
    weights_gib = peak_gib()
    runs = []
    for i in range(args.runs + 1):  # the first run warms up
        reset_peak()
        result = pipe.generate(PROMPT, width=args.size, height=args.size, steps=args.steps, guidance=0.0, seed=i)
        t = dict(result.timings)
        mark = time.perf_counter()
        encode(result.images[0], Parameters(PROMPT, None, args.steps, 0.0, i, args.size, args.size, name))
        t["png"] = time.perf_counter() - mark
        t["peak_gib"] = peak_gib()
        if i:
            runs.append(t)
    del pipe
    reset_peak()
    return {"load_s": load_s, "weights_gib": weights_gib, "runs": runs}


def time_diffusers(path: Path, args, dtype: str) -> dict:
    from diffusers import ZImagePipeline

    from ollimg.runtime.noise import noise

    reset_peak()
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    start = time.perf_counter()
    pipe = ZImagePipeline.from_pretrained(path, dtype=torch_dtype).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    sync()
    load_s = time.perf_counter() - start
    weights_gib = peak_gib()
    runs = []
    for i in range(args.runs + 1):
        reset_peak()
        start_latents = torch.from_numpy(noise(i, 1, (16, args.size // 8, args.size // 8))).to(args.device)
        with torch.no_grad():
            t0 = time.perf_counter()
            embeds, _ = pipe.encode_prompt(PROMPT, device=pipe._execution_device, do_classifier_free_guidance=False)
            sync()
            t1 = time.perf_counter()
            latents = pipe(prompt_embeds=embeds, height=args.size, width=args.size, num_inference_steps=args.steps,
                           guidance_scale=0.0, latents=start_latents, output_type="latent").images
            sync()
            t2 = time.perf_counter()
            z = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
            image = pipe.image_processor.postprocess(pipe.vae.decode(z, return_dict=False)[0], output_type="pil")[0]
            sync()
            t3 = time.perf_counter()
        t = {"text_encode": t1 - t0, "denoise": t2 - t1, "decode": t3 - t2, "png": png_seconds(image),
             "peak_gib": peak_gib()}
        if i:
            runs.append(t)
    del pipe
    reset_peak()
    return {"load_s": load_s, "weights_gib": weights_gib, "runs": runs}


def median(runs: list[dict], key: str) -> float:
    values = sorted(r[key] for r in runs)
    return values[len(values) // 2]


def table(results: dict) -> str:
    keys = ["text_encode", "denoise", "decode", "png", "peak_gib"]
    lines = ["| | " + " | ".join(keys) + " | load s | weights GiB |", "|---" * (len(keys) + 3) + "|"]
    for who, r in results.items():
        if not isinstance(r, dict) or "runs" not in r:
            continue
        cells = [f"{median(r['runs'], k):.3f}" for k in keys]
        lines.append(f"| {who} | " + " | ".join(cells) + f" | {r['load_s']:.1f} | {r['weights_gib']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch dir: model dir and store go here")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (try the flow on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--offload", action="store_true",
                        help="also time the bf16 model with OLLIMG_OFFLOAD=always (text encoder uploaded per prompt)")
    parser.add_argument("--fp8", action="store_true",
                        help="also import with --quantize fp8 and time it, dequantized per call and multiplied in fp8")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from ollimg.create import create
    from ollimg.manifest import Store

    model_dir, store_dir = args.work / "Z-Image-random", args.work / "store"
    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__, "size": args.size, "steps": args.steps, "dtype": args.dtype}
    start = time.perf_counter()
    if not (model_dir / "model_index.json").is_file():
        write_model(model_dir, args.tiny, args.device)
    results["write_s"] = time.perf_counter() - start
    start = time.perf_counter()
    model = create(Store(store_dir), "zimage-random:bf16", model_dir)
    results["create_s"] = time.perf_counter() - start
    results["model_bytes"] = model.size
    print(f"model written in {results['write_s']:.1f}s, imported in {results['create_s']:.1f}s "
          f"({model.size / 1e9:.2f} GB)", flush=True)
    variants = [("ollimg", "zimage-random:bf16", {})]
    if args.offload:
        variants.append(("ollimg, text encoder offloaded", "zimage-random:bf16", {"OLLIMG_OFFLOAD": "always"}))
    if args.fp8:
        start = time.perf_counter()
        create(Store(store_dir), "zimage-random:fp8", model_dir, quantize="fp8")
        results["create_fp8_s"] = time.perf_counter() - start
        variants += [("ollimg fp8, dequantized per call", "zimage-random:fp8", {"OLLIMG_FP8_MATMUL": "off"}),
                     ("ollimg fp8, fp8 matmul", "zimage-random:fp8", {})]
        if args.offload:
            variants.append(("ollimg fp8, fp8 matmul, text encoder offloaded", "zimage-random:fp8", {"OLLIMG_OFFLOAD": "always"}))
    for label, name, env in variants:
        results[label] = time_ollimg(name, store_dir, args, args.dtype, env)
        print(table(results), flush=True)
    if not args.skip_diffusers:
        results["diffusers"] = time_diffusers(model_dir, args, args.dtype)
    print(json.dumps(results, indent=1))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
