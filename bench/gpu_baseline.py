"""GPU baseline: ollimg's torch runtime next to diffusers' ZImagePipeline, same run, same weights.

Writes a full-size Z-Image-Turbo model with random bf16 weights in the real layout (real configs,
sharded safetensors + index), imports it with `ollimg.create.create` (what `ollimg create` runs),
then times per stage at 1024x1024, 8 steps, bf16: text encode, denoise, VAE decode, PNG; and the
peak GPU memory of each. diffusers is only the reference here (test/bench dependency).

    python bench/gpu_baseline.py --work /tmp/zbench [--runs 3] [--size 1024] [--steps 8] [--fp8] [--offload]
        [--eager] [--sdpa] [--multi-kernel] [--diffusers-compiled] [--floor] [--starts] [--cold]
    python bench/gpu_baseline.py --work /tmp/zbench-tiny --tiny      # the same flow on CPU, tiny model

ollimg runs as it ships (on CUDA: fused GEMMs and torch.compile'd blocks); `--eager` adds it with
OLLIMG_COMPILE=off, `--sdpa` with OLLIMG_ATTENTION=sdpa (no FlashAttention 4). "first" is the first generation after load (it includes compiling), "prompt
to PNG" one generation plus PNG encoding, warm. `--floor` measures the sustained bf16 and fp8
matmul rate and reports denoise as a multiple of the FLOPs at that rate. `--starts` times a fresh
process from start to first PNG with a warm compile cache, against one with OLLIMG_COMPILE=off;
`--cold` the same with the page cache dropped (root), for ollimg and diffusers.

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

    import torch._dynamo
    import torch._inductor.config as inductor

    env = {"OLLIMG_COMPILE": "on", **env}  # compiled from the warm-up run (auto runs a load's first one eagerly)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    fp8_matmul.cache_clear()
    torch._dynamo.reset()  # each variant compiles (or loads from the on-disk cache) its own graphs
    inductor.coordinate_descent_tuning = env.get("TORCHINDUCTOR_COORDINATE_DESCENT_TUNING") == "1"
    inductor.triton.multi_kernel = int(env.get("TORCHINDUCTOR_MULTI_KERNEL", "0"))  # read from the env only at import
    try:
        return _time_ollimg(name, models_dir, args, dtype)
    finally:
        inductor.coordinate_descent_tuning = False
        inductor.triton.multi_kernel = 0
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        fp8_matmul.cache_clear()


def _time_ollimg(name: str, models_dir: Path, args, dtype: str) -> dict:
    from ollimg.runtime import load

    reset_peak()
    start = time.perf_counter()
    pipe = load(name, backend="torch", device=args.device, dtype=dtype, models_dir=models_dir)
    sync()
    load_s = time.perf_counter() - start
    weights_gib = peak_gib()
    runs, first_s = [], 0.0
    for i in range(args.runs + 1):  # the first run warms up (and compiles)
        reset_peak()
        t = ollimg_image(pipe, name, args, seed=i)
        t["peak_gib"] = peak_gib()
        if i:
            runs.append(t)
        else:
            first_s = t["prompt_to_png"]
    tokens = len(pipe.tokenizer.encode([PROMPT], pipe.defaults.max_sequence_length)[0])
    del pipe
    reset_peak()
    return {"load_s": load_s, "first_s": first_s, "weights_gib": weights_gib, "runs": runs, "prompt_tokens": tokens}


def ollimg_image(pipe, name: str, args, seed: int) -> dict:
    """One generation and its PNG bytes (what the runtime sends), timed per stage."""
    from ollimg.runtime.images import Parameters, encode

    start = time.perf_counter()
    result = pipe.generate(PROMPT, width=args.size, height=args.size, steps=args.steps, guidance=0.0, seed=seed)
    mark = time.perf_counter()
    encode(result.images[0], Parameters(PROMPT, None, args.steps, 0.0, seed, args.size, args.size, name))
    t = dict(result.timings)
    t["png"] = time.perf_counter() - mark
    t["prompt_to_png"] = time.perf_counter() - start
    return t


def load_diffusers(path: Path, device: str, dtype: str, compiled: bool):
    from diffusers import ZImagePipeline

    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    pipe = ZImagePipeline.from_pretrained(path, dtype=torch_dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    if compiled:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    return pipe


def time_diffusers(path: Path, args, dtype: str, compiled: bool = False) -> dict:
    reset_peak()
    start = time.perf_counter()
    pipe = load_diffusers(path, args.device, dtype, compiled)
    sync()
    load_s = time.perf_counter() - start
    weights_gib = peak_gib()
    runs, first_s = [], 0.0
    for i in range(args.runs + 1):
        reset_peak()
        t = diffusers_image(pipe, args, seed=i)
        t["peak_gib"] = peak_gib()
        if i:
            runs.append(t)
        else:
            first_s = t["prompt_to_png"]
    del pipe
    reset_peak()
    return {"load_s": load_s, "first_s": first_s, "weights_gib": weights_gib, "runs": runs}


def diffusers_image(pipe, args, seed: int) -> dict:
    from ollimg.runtime.noise import noise

    start_latents = torch.from_numpy(noise(seed, 1, (16, args.size // 8, args.size // 8))).to(args.device)
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
    png = png_seconds(image)
    return {"text_encode": t1 - t0, "denoise": t2 - t1, "decode": t3 - t2, "png": png,
            "prompt_to_png": t3 - t0 + png}


def matmul_rates(device: str, seconds: float = 3.0) -> dict:
    """Sustained dense matmul TFLOP/s at the denoiser's shape class (8192^3): bf16, and fp8 `_scaled_mm`
    with row/column scales and fast accumulation (what the fp8 runtime uses)."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t().contiguous().t()
    sa, sb = torch.ones(n, 1, device=device), torch.ones(1, n, device=device)
    kernels = {"bf16": lambda: a @ b,
               "fp8": lambda: torch._scaled_mm(a8, b8, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16,
                                                use_fast_accum=True)}
    rates = {}
    for label, fn in kernels.items():
        for _ in range(3):
            fn()
        sync()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(10):
                fn()
            sync()
            count += 10
        rates[label] = 2 * n**3 * count / (time.perf_counter() - start) / 1e12
    return rates


def step_tflop(tokens: int, size: int) -> float:
    """Matmul and attention FLOPs of one denoising step of the full-size DiT at `size`, batch 1."""
    from ollimg.runtime.models.zimage.config import TransformerConfig

    config = TransformerConfig.from_json(TRANSFORMER)
    dim, ffn, layers = config.dim, config.ffn_dim, config.n_layers

    def block(length: int) -> float:
        return 2 * length * (4 * dim * dim + 3 * dim * ffn) + 4 * length * length * dim

    pad = lambda n: n + (-n) % 32  # noqa: E731
    image, caption = pad((size // 16) ** 2), pad(tokens)
    refiners = TRANSFORMER["n_refiner_layers"]
    return (layers * block(image + caption) + refiners * (block(image) + block(caption))) / 1e12


START = """
import json, sys, time
t0 = float(sys.argv[1])
marks = {"python": time.time() - t0}
which, path, models, size, steps = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
import torch
marks["import torch"] = time.time() - t0
torch.zeros(1, device="cuda")
marks["cuda init"] = time.time() - t0
sys.path.insert(0, sys.argv[7])
import gpu_baseline as bench
class Args: pass
args = Args(); args.size, args.steps, args.device = size, steps, "cuda"
if which == "diffusers":
    pipe = bench.load_diffusers(path, "cuda", "bfloat16", False)
    bench.sync(); marks["loaded"] = time.time() - t0
    bench.diffusers_image(pipe, args, 0)
else:
    import logging
    class Since(logging.Formatter):  # the runtime's load log, in seconds from the process's start
        def format(self, record):
            return f"@ {record.created - t0:6.2f} {record.name}: {record.getMessage()}"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Since())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    from ollimg.runtime import load
    marks["import ollimg"] = time.time() - t0
    pipe = load(path, backend="torch", device="cuda", dtype="bfloat16", models_dir=models)
    bench.sync(); marks["loaded"] = time.time() - t0
    bench.ollimg_image(pipe, path, args, 0)
marks["first png"] = time.time() - t0
if which != "diffusers":  # compiled: the first run was eager if the compiler's imports were not done
    bench.ollimg_image(pipe, path, args, 1)
    marks["second png"] = time.time() - t0
print(json.dumps(marks))
"""


def disk_read_rate(folder: Path, threads: int) -> float:
    """GB/s reading every file under `folder` with `threads` parallel readers, page cache dropped first."""
    from concurrent.futures import ThreadPoolExecutor

    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    files = [f for f in folder.rglob("*") if f.is_file()]

    def read(file: Path) -> int:
        total, buffer = 0, bytearray(16 << 20)
        with open(file, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
        return total

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(read, files))
    return total / (time.perf_counter() - start) / 1e9


def start_to_png(which: str, path: str, models: Path, args, env: dict, cold: bool) -> dict:
    """A fresh process, from its start to its first PNG (page cache dropped first when `cold`)."""
    import subprocess

    if cold:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    t0 = time.time()
    run = subprocess.run([sys.executable, "-c", START, str(t0), which, path, str(models), str(args.size),
                          str(args.steps), str(ROOT / "bench")], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=900)
    if run.returncode:
        return {"error": run.stderr[-1500:]}
    marks = json.loads(run.stdout.strip().splitlines()[-1])
    marks["log"] = [line[2:] for line in run.stderr.splitlines() if line.startswith("@ ")]
    return marks


def median(runs: list[dict], key: str) -> float:
    values = sorted(r[key] for r in runs)
    return values[len(values) // 2]


def table(results: dict) -> str:
    keys = ["text_encode", "denoise", "decode", "png", "prompt_to_png", "peak_gib"]
    floor = results.get("floor_s", {})
    lines = ["| | " + " | ".join(keys) + " | denoise / floor | first s | load s | weights GiB |",
             "|---" * (len(keys) + 5) + "|"]
    for who, r in results.items():
        if not isinstance(r, dict) or "runs" not in r:
            continue
        cells = [f"{median(r['runs'], k):.3f}" for k in keys]
        ref = floor.get("fp8" if "fp8" in who and "dequantized" not in who else "bf16")
        ratio = f"{median(r['runs'], 'denoise') / ref:.2f}" if ref else ""
        lines.append(f"| {who} | " + " | ".join(cells) + f" | {ratio} | {r.get('first_s', 0):.1f} | {r['load_s']:.1f} "
                     f"| {r['weights_gib']:.2f} |")
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
    parser.add_argument("--eager", action="store_true", help="also time ollimg with OLLIMG_COMPILE=off")
    parser.add_argument("--diffusers-compiled", action="store_true",
                        help="also time diffusers with transformer.compile_repeated_blocks(fullgraph=True)")
    parser.add_argument("--tuned", action="store_true",
                        help="also time ollimg with inductor's coordinate descent tuning of its kernels")
    parser.add_argument("--floor", action="store_true", help="measure the matmul rates and the denoise floor")
    parser.add_argument("--starts", action="store_true", help="time fresh processes to the first PNG (warm compile cache)")
    parser.add_argument("--cold", action="store_true", help="also with the page cache dropped (needs root)")
    parser.add_argument("--first-compile", action="store_true",
                        help="with --starts: first a start with an empty compile cache (the first start ever)")
    parser.add_argument("--multi-kernel", action="store_true",
                        help="also each ollimg variant with inductor's multi-kernel reductions (persistent, whole-row "
                             "variants of the norm and fp8-quantization reductions up to 16384 wide, picked by timing); needs an "
                             "empty inductor cache: on torch 2.11 a warm one failed to compile (bench/README.md, 2026-12-03)")
    parser.add_argument("--sdpa", action="store_true",
                        help="also each ollimg variant with OLLIMG_ATTENTION=sdpa (no FlashAttention 4)")
    parser.add_argument("--only-starts", action="store_true", help="skip the in-process timings")
    parser.add_argument("--disk", action="store_true", help="measure the disk's read rate (page cache dropped)")
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
    if args.floor:
        rates = matmul_rates(args.device)
        results["matmul_tflops"] = rates
        print("sustained matmul TFLOP/s:", rates, flush=True)
    variants = [("ollimg", "zimage-random:bf16", {})] if not args.only_starts else []
    if args.eager:
        variants.append(("ollimg eager (OLLIMG_COMPILE=off)", "zimage-random:bf16", {"OLLIMG_COMPILE": "off"}))
    if args.tuned:
        variants.append(("ollimg, inductor coordinate descent tuning", "zimage-random:bf16",
                         {"TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1"}))
    if args.multi_kernel:
        variants.append(("ollimg, inductor multi-kernel reductions", "zimage-random:bf16", {"TORCHINDUCTOR_MULTI_KERNEL": "1"}))
    if args.sdpa:
        variants.append(("ollimg, SDPA attention (OLLIMG_ATTENTION=sdpa)", "zimage-random:bf16",
                         {"OLLIMG_ATTENTION": "sdpa"}))
    if args.offload:
        variants.append(("ollimg, text encoder offloaded", "zimage-random:bf16", {"OLLIMG_OFFLOAD": "always"}))
    if args.fp8:
        start = time.perf_counter()
        create(Store(store_dir), "zimage-random:fp8", model_dir, quantize="fp8")
        results["create_fp8_s"] = time.perf_counter() - start
        variants += [("ollimg fp8, fp8 matmul", "zimage-random:fp8", {})]
        if args.multi_kernel:
            variants.append(("ollimg fp8, inductor multi-kernel reductions", "zimage-random:fp8",
                             {"TORCHINDUCTOR_MULTI_KERNEL": "1"}))
        if args.sdpa:
            variants.append(("ollimg fp8, SDPA attention", "zimage-random:fp8", {"OLLIMG_ATTENTION": "sdpa"}))
        if args.eager:
            variants.append(("ollimg fp8 eager", "zimage-random:fp8", {"OLLIMG_COMPILE": "off"}))
        if args.offload:
            variants.append(("ollimg fp8, fp8 matmul, text encoder offloaded", "zimage-random:fp8", {"OLLIMG_OFFLOAD": "always"}))
    for label, name, env in variants:
        results[label] = time_ollimg(name, store_dir, args, args.dtype, env)
        if args.floor and "floor_s" not in results:
            flop = step_tflop(results[label]["prompt_tokens"], args.size) * args.steps
            results["step_tflop"] = flop / args.steps
            results["floor_s"] = {k: flop / rate for k, rate in results["matmul_tflops"].items()}
        print(table(results), flush=True)
    if not args.skip_diffusers and not args.only_starts:
        results["diffusers"] = time_diffusers(model_dir, args, args.dtype)
        print(table(results), flush=True)
    if args.diffusers_compiled:
        results["diffusers compiled"] = time_diffusers(model_dir, args, args.dtype, compiled=True)
        print(table(results), flush=True)
    if args.starts or args.cold:
        starts = {}
        if args.first_compile:  # an empty compile cache: the first start ever on this machine
            fresh = args.work / "compile-cache"
            starts["ollimg, first compile"] = start_to_png(
                "ollimg", "zimage-random:bf16", store_dir, args,
                {"TORCHINDUCTOR_CACHE_DIR": str(fresh / "inductor"), "TRITON_CACHE_DIR": str(fresh / "triton")}, False)
        if args.only_starts:  # nothing ran in this process to fill the compile cache: a start does
            starts["ollimg, compile cache as found"] = start_to_png("ollimg", "zimage-random:bf16", store_dir, args,
                                                                    {}, False)
            if args.fp8 and args.cold:  # the fp8 model's graphs too, before its cold start
                starts["ollimg fp8, compile cache as found"] = start_to_png("ollimg", "zimage-random:fp8", store_dir,
                                                                            args, {}, False)
        for cold in [False] + ([True] if args.cold else []):
            tag = "cold" if cold else "warm page cache"
            starts[f"ollimg, {tag}"] = start_to_png("ollimg", "zimage-random:bf16", store_dir, args, {}, cold)
            starts[f"ollimg eager, {tag}"] = start_to_png("ollimg", "zimage-random:bf16", store_dir, args,
                                                          {"OLLIMG_COMPILE": "off"}, cold)
            if cold and args.fp8:
                starts[f"ollimg fp8, {tag}"] = start_to_png("ollimg", "zimage-random:fp8", store_dir, args, {}, cold)
            if cold and not args.skip_diffusers:
                starts[f"diffusers, {tag}"] = start_to_png("diffusers", str(model_dir), store_dir, args, {}, cold)
            print(json.dumps(starts, indent=1), flush=True)
        results["starts"] = starts
    if args.disk:
        results["disk_gb_s"] = {n: disk_read_rate(store_dir / "blobs", n) for n in (1, 16)}
        print("disk read GB/s (page cache dropped):", results["disk_gb_s"], flush=True)
    print(json.dumps(results, indent=1))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
