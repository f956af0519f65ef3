"""Synthetic models for tests and benches, fast and easy to break on purpose.

`make_model` writes small diffusers-layout dirs with numpy + safetensors (for the store tests;
unlike fixtures/make_tiny_zimage.py they use no diffusers classes). `write_model` writes models of
chosen sizes straight into a store (tensor blobs, file layers, config, manifest) for the registry
tests and bench. Seeded: the same arguments give the same bytes.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from fixtures.zimage_index import MODEL_INDEX
from ollimg.blobs import tensor_blob_header
from ollimg.manifest import Descriptor, Manifest, Model, Name, Store
from ollimg.manifest.manifest import CONFIG_TYPE, file_layer, tensor_layer



def _rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def make_model(root: Path, seed: int = 0, dim: int = 32, layers: int = 2, extra: dict | None = None) -> Path:
    """Write a model dir at `root`; returns it. Tensor values depend on `seed`, names on `dim`/`layers`."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    (root / "ollimg.json").write_text(json.dumps(extra or {"defaults": {"steps": 8, "guidance": 0.0}, "description": "test"}))
    (root / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- text-to-image\n---\n# test model\n")

    sched = root / "scheduler"
    sched.mkdir(exist_ok=True)
    (sched / "scheduler_config.json").write_text(json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}))
    tok = root / "tokenizer"
    tok.mkdir(exist_ok=True)
    (tok / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    (tok / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (tok / "merges.txt").write_text("#version: 0.2\na b\n")

    tr = root / "transformer"
    tr.mkdir(exist_ok=True)
    (tr / "config.json").write_text(json.dumps({"_class_name": "ZImageTransformer2DModel", "dim": dim, "n_layers": layers}))
    tensors = {
        "x_pad_token": _rand(rng, 1, dim), "cap_pad_token": _rand(rng, 1, dim),
        "all_x_embedder.2-1.weight": _rand(rng, dim, 64), "all_x_embedder.2-1.bias": _rand(rng, dim),
        "t_embedder.mlp.0.weight": _rand(rng, 64, dim), "cap_embedder.1.weight": _rand(rng, dim, dim),
        "all_final_layer.2-1.linear.weight": _rand(rng, 64, dim),
        "all_final_layer.2-1.adaLN_modulation.1.weight": _rand(rng, dim, dim),
    }
    for i in range(layers):
        p = f"layers.{i}."
        tensors |= {
            p + "attention.to_q.weight": _rand(rng, dim, dim), p + "attention.to_k.weight": _rand(rng, dim, dim),
            p + "attention.norm_q.weight": _rand(rng, dim // 2), p + "attention_norm1.weight": _rand(rng, dim),
            p + "feed_forward.w1.weight": _rand(rng, 3 * dim, dim), p + "feed_forward.w2.weight": _rand(rng, dim, 3 * dim),
            p + "adaLN_modulation.0.weight": _rand(rng, 4 * dim, dim), p + "adaLN_modulation.0.bias": _rand(rng, 4 * dim),
        }
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tr / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (tr / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    te = root / "text_encoder"
    te.mkdir(exist_ok=True)
    (te / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"], "hidden_size": dim}))
    save_file({
        "model.embed_tokens.weight": _rand(rng, 100, dim).astype(np.float16),
        "model.layers.0.self_attn.q_proj.weight": _rand(rng, dim, dim).astype(np.float16),
        "model.layers.0.input_layernorm.weight": _rand(rng, dim).astype(np.float16),
        "model.norm.weight": _rand(rng, dim).astype(np.float16),
    }, te / "model.safetensors")

    vae = root / "vae"
    vae.mkdir(exist_ok=True)
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 16}))
    save_file({"decoder.conv_in.weight": _rand(rng, 8, 16, 3, 3), "decoder.conv_in.bias": _rand(rng, 8),
               "encoder.conv_in.weight": _rand(rng, 8, 3, 3, 3)}, vae / "diffusion_pytorch_model.safetensors")
    return root


def make_big_model(root: Path, tensors: int, tensor_bytes: int) -> Path:
    """A model whose transformer holds `tensors` distinct F32 tensors of `tensor_bytes` each, in 4 shards."""
    make_model(root)
    tr = root / "transformer"
    for f in tr.glob("*.safetensors*"):
        f.unlink()
    rows = tensor_bytes // 4 // 256
    names = [f"layers.{i}.attention.to_q.weight" for i in range(tensors)]
    per = -(-tensors // 4)
    weight_map = {}
    for s in range(4):
        shard = f"diffusion_pytorch_model-{s + 1:05d}-of-00004.safetensors"
        part = {n: np.full((rows, 256), i, dtype=np.float32) for i, n in enumerate(names) if i // per == s}
        save_file(part, tr / shard)
        weight_map |= {n: shard for n in part}
    (tr / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return root


def set_dtype(path: Path, tensor: str, dtype: str) -> None:
    """Rewrite one tensor's dtype in a safetensors header in place (same byte length required)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header[tensor]["dtype"] = dtype
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n, "new header must fit"
    path.write_bytes(raw[:8] + text + b" " * (n - len(text)) + raw[8 + n :])


def listing(root: Path) -> list[tuple[str, int]]:
    """Every file under `root` (but the lock file) with its size: compare before/after a failed command."""
    if not root.exists():
        return []
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file() and p.name != ".lock")


PIECE = 8 << 20


def write_model(store: Store, name: str, tensors: dict[str, tuple[str, tuple[int, ...]]], files: dict[str, bytes],
                seed: int = 0) -> Model:
    """Random tensor data for `tensors` ({title: (dtype, shape)}), `files` as file layers."""
    rng = random.Random(seed)
    layers, table = [], {}
    with store.lock():
        for title, (dtype, shape) in tensors.items():
            header = tensor_blob_header(dtype, shape)
            nbytes = _nbytes(dtype, shape)
            with store.blobs.writer() as writer:
                writer.write(header)
                for start in range(0, nbytes, PIECE):
                    writer.write(rng.randbytes(min(PIECE, nbytes - start)))
                digest = writer.commit()
            layers.append(tensor_layer(title, digest, len(header) + nbytes, dtype, shape))
            table[title] = {"dtype": dtype, "shape": list(shape), "digest": digest}
        for title, data in files.items():
            layers.append(file_layer(title, store.blobs.put_bytes(data), len(data)))
        config = json.dumps({"format": 1, "pipeline": "Synthetic", "seed": seed, "tensors": table}).encode()
        config_desc = Descriptor(mediaType=CONFIG_TYPE, digest=store.blobs.put_bytes(config), size=len(config))
        raw = Manifest(config=config_desc, layers=layers).dump()
        return store.put_manifest(Name.parse(name), raw)


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    from ollimg.blobs import DTYPE_SIZES

    n = DTYPE_SIZES[dtype]
    for d in shape:
        n *= d
    return n


def pipeline_tensors(count: int, total_bytes: int, seed: int = 0) -> dict[str, tuple[str, tuple[int, ...]]]:
    """`count` BF16 tensors shaped like a diffusion pipeline's: ~60 % small (norms, biases of
    1-16 KiB), the rest square-ish weights sharing what is left of `total_bytes`."""
    rng = random.Random(seed)
    small = int(count * 0.6)
    tensors = {}
    used = 0
    for i in range(small):
        n = rng.choice([512, 1024, 2048, 3840, 4096, 8192])
        tensors[f"transformer/layers.{i // 4}.norm{i % 4}.weight"] = ("BF16", (n,))
        used += 2 * n
    big = count - small
    each = max((total_bytes - used) // big, 2)
    for i in range(big):
        # widths vary +-50 % around the mean, like attention vs. MLP weights
        elements = int(each / 2 * rng.uniform(0.5, 1.5))
        cols = 1024
        tensors[f"transformer/layers.{i // 4}.proj{i % 4}.weight"] = ("BF16", (max(elements // cols, 1), cols))
    return tensors
