"""The GPU speed paths of the torch Z-Image runtime, checked on the CPU: fused GEMMs equal the
separate layers (bf16/fp32 and fp8 weights; q/k rows in the halves order that RoPE then reads
contiguously), and torch.compile'd blocks (OLLIMG_COMPILE=on; CUDA turns it on by default) equal
eager ones, report their first run, compile no new graph for a new size, and a second process
with the same cache compiles nothing (inductor's FX graph cache hits). The same on the GPU:
tests/parity/test_cuda_parity.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ollimg.runtime import load, torch_compile


def transformer_output(pipe, seed=0):
    transformer = pipe.components.modules["transformer"]
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((2, 16, 8, 6)).astype(np.float32))
    caps = [torch.from_numpy(rng.standard_normal((n, transformer.config.cap_feat_dim)).astype(np.float32)) for n in (5, 40)]
    with torch.inference_mode():
        return transformer(x, np.array([0.3, 0.3], np.float32), caps)


def test_fused_projections_equal_the_separate_layers(tiny_zimage_dir, monkeypatch):
    monkeypatch.setenv("OLLIMG_COMPILE", "off")
    pipe = load(tiny_zimage_dir, backend="torch", device="cpu")
    before = transformer_output(pipe)
    pipe.components.modules["transformer"].fuse()
    attention = pipe.components.modules["transformer"].layers[0].attention
    assert attention.to_qkv is not None and not hasattr(attention, "to_q")
    after = transformer_output(pipe)
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-5 * before.abs().max().item())


def test_rope_on_halves_equals_rope_on_interleaved_pairs_reordered():
    from ollimg.runtime.models.zimage.torch.transformer import apply_rope, apply_rope_halves, halves_order

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, 8, generator=g)  # (B, L, H, D)
    angles = torch.rand(2, 7, 4, generator=g) * 10
    order = halves_order(3, 8)
    assert order[:8].tolist() == [0, 2, 4, 6, 1, 3, 5, 7] and order[8:16].tolist() == [8, 10, 12, 14, 9, 11, 13, 15]
    interleaved = apply_rope(x, torch.stack([angles.cos(), angles.sin()], dim=-1))
    halves = apply_rope_halves(x.flatten(2)[..., order].unflatten(-1, (3, 8)), torch.stack([angles.cos(), angles.sin()], dim=-2))
    assert torch.allclose(halves, interleaved.flatten(2)[..., order].unflatten(-1, (3, 8)), atol=1e-6)


def test_fused_fp8_projections_keep_their_per_channel_scales(tiny_zimage_dir, store_dir, monkeypatch):
    from ollimg.create import create
    from ollimg.manifest import Store

    monkeypatch.setenv("OLLIMG_COMPILE", "off")
    create(Store(store_dir), "tiny:fp8", tiny_zimage_dir, quantize="fp8")
    pipe = load("tiny:fp8", backend="torch", device="cpu", models_dir=store_dir)
    before = transformer_output(pipe)
    pipe.components.modules["transformer"].fuse()
    fused = pipe.components.modules["transformer"].layers[0].feed_forward.w13
    assert fused.weight.dtype == torch.float8_e4m3fn and fused.weight_scale.shape == (fused.weight.shape[0],)
    after = transformer_output(pipe)
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-5 * before.abs().max().item())


COMPILED_RUN = """
import json, os, sys
import numpy as np
import torch._dynamo.utils as dynamo
from ollimg.runtime import load

def run(pipe, **extra):
    steps = []
    result = pipe.generate("a red circle", width=32, height=32, steps=2, seed=3, guidance=0, on_step=steps.append, **extra)
    return result, steps

os.environ["OLLIMG_COMPILE"] = "off"
eager, _ = run(load(sys.argv[1], backend="torch", device="cpu"))
os.environ["OLLIMG_COMPILE"] = "on"
pipe = load(sys.argv[1], backend="torch", device="cpu")
compiled, steps = run(pipe)
graphs = dynamo.counters["stats"]["unique_graphs"]
pipe.generate("a much longer prompt: two blue squares", width=48, height=32, steps=2, seed=4, guidance=0)
print(json.dumps({
    "difference": float(np.abs(compiled.latents - eager.latents).max() / np.abs(eager.latents).max()),
    "statuses": [s.status for s in steps if s.step == 0], "steps": [s.step for s in steps if s.step],
    "new_graphs_for_a_new_size": dynamo.counters["stats"]["unique_graphs"] - graphs,
    "text_encoder_compiled": [l._compiled_call_impl is not None for l in pipe.components.modules["text_encoder"].layers],
    "inductor": dict(dynamo.counters["inductor"])}))
"""


def compiled_run(model_dir, cache_dir) -> dict:
    """One fresh process: eager, then compiled (OLLIMG_COMPILE=on) with inductor's cache in `cache_dir`."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir)}
    run = subprocess.run([sys.executable, "-c", COMPILED_RUN, str(model_dir)], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_compiled_blocks_equal_eager_and_a_warm_cache_compiles_nothing(tiny_zimage_dir, tmp_path):
    """Two fresh processes with the same settings and compile cache (each process alike, so that
    nothing a test before changed in torch's global state reaches the cache key)."""
    first = compiled_run(tiny_zimage_dir, tmp_path / "inductor")
    assert first["difference"] <= 1e-5
    assert first["statuses"] == [torch_compile.NOTICE] and first["steps"] == [1, 2]
    assert first["new_graphs_for_a_new_size"] == 0  # dynamic sizes and prompt lengths: no new graph
    assert first["text_encoder_compiled"] and all(first["text_encoder_compiled"])
    assert first["inductor"].get("fxgraph_cache_miss", 0) >= 3  # the DiT's two block kinds, the encoder's layer
    second = compiled_run(tiny_zimage_dir, tmp_path / "inductor")
    assert second["difference"] <= 1e-5
    hits, misses = second["inductor"].get("fxgraph_cache_hit", 0), second["inductor"].get("fxgraph_cache_miss", 0)
    assert hits >= 3 and misses == 0, second["inductor"]


def test_the_text_encoder_on_a_gpu_leaves_its_table_mapped_in_cpu_memory():
    """load_encoder on a GPU backend (a fake: it records what is asked and where): the layers are
    uploaded as resident weights, the embedding table is asked for mapped in CPU memory and not
    counted, and the encoder casts the looked-up rows to the layers' device and dtype. The same on
    a real GPU: test_text_encoder_table_stays_in_cpu_memory_on_cuda."""
    from types import SimpleNamespace

    from ollimg.runtime.components.qwen3 import weights as qwen3_weights
    from ollimg.runtime.components.qwen3.config import Qwen3Config
    from ollimg.runtime.components.qwen3.torch import load_encoder

    class FakeGpu:
        device, torch_dtype = torch.device("cuda"), torch.bfloat16

        def __init__(self):
            self.asked = []

        def load_tensors(self, refs, dtype=None, resident=True, device=None):
            self.asked.append((set(refs), resident, device))
            return {name: torch.zeros(ref.shape) for name, ref in refs.items()}

    config = Qwen3Config.from_json(dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                                        rope_theta=1e6))
    refs = {name: SimpleNamespace(shape=shape) for name, shape in qwen3_weights.shapes(config, 2).items()}
    backend = FakeGpu()
    encoder = load_encoder(backend, config, (2,), refs, "text_encoder")
    layers = set(refs) - {"embed_tokens.weight"}
    assert backend.asked == [(layers, True, None), ({"embed_tokens.weight"}, False, "cpu")]
    assert encoder.compute == (torch.device("cuda"), torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_gpu_group_norm_equals_torchs(dtype):
    """autoencoder_kl's GroupNorm on a GPU (`group_stats`: sum and sum-of-squares reductions, whole
    or strip by strip; `normed`: batch_norm's kernel applying float32 a * x + b), run here on the
    CPU against torch's F.group_norm: float32 within 1e-4 of the largest value, bf16 one rounding
    step at most and the same value almost everywhere. On the GPU: test_group_norm_on_cuda_equals_torchs."""
    from ollimg.runtime.components.autoencoder_kl.torch import GroupNorm, group_stats, normed

    torch.manual_seed(0)
    for shape in [(1, 128, 96, 80), (2, 64, 32, 32), (1, 32, 4, 4)]:
        norm = GroupNorm(32, shape[1]).to(dtype)
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
        x = (torch.randn(shape) * 3 + 1.5).to(dtype)
        ref = F.group_norm(x, 32, norm.weight, norm.bias, norm.eps)
        H = shape[2]
        for rows in ([(0, H)], [(0, 1), (1, H // 2), (H // 2, H)]):  # whole, and in strips
            stats = group_stats(norm, x, rows)
            got = torch.cat([normed(x[:, :, a:b], stats) for a, b in rows], dim=2)
            assert got.dtype == dtype and got.shape == x.shape
            if dtype == torch.float32:
                torch.testing.assert_close(got, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
            else:
                step = ref.float().abs().clamp_min(1e-2) * 2 ** -7  # one bf16 rounding step
                assert ((got.float() - ref.float()).abs() <= step).all()
                assert (got == ref).float().mean() > 0.99
