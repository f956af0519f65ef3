"""The torch backend on CUDA against diffusers on the same GPU: bf16, and an fp8 model against
its own dequantized weights, dequantized per call and multiplied in fp8. CI has no GPU, so these run only on a CUDA machine (the project's
lent GPU machine); elsewhere they are skipped, and say why.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ollimg.runtime import load, torch_attention, torch_compile
from tests.parity.reference import compare, reference_pipe

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def compiled_from_the_first_generation(monkeypatch):
    """Every run below goes through the compiled blocks from its first generation (the default,
    auto, compiles from a load's second: test_auto_compiles_from_a_loads_second_generation)."""
    monkeypatch.setenv("OLLIMG_COMPILE", "on")


def reference(tiny_zimage_dir, dtype):
    return reference_pipe(tiny_zimage_dir, dtype, device="cuda")


def test_float32_on_cuda(tiny_zimage_dir):
    ours = load(tiny_zimage_dir, backend="torch", device="cuda", dtype="float32")
    compare(ours, reference(tiny_zimage_dir, torch.float32), ["a lighthouse at dusk", "a red bicycle"],
            guidance=2.0, negative=["blurry", ""], width=64, height=48)


def test_bfloat16_on_cuda(tiny_zimage_dir):
    ours = load(tiny_zimage_dir, backend="torch", device="cuda", dtype="bfloat16")
    assert ours.generate("x", width=16, height=16, steps=1).images  # default-dtype path runs
    compare(ours, reference(tiny_zimage_dir, torch.bfloat16), ["a portrait of an old fisherman"], guidance=3.0,
            negative=["blurry"], latent_rtol=3e-2, levels=8, width=48, height=48)
    compare(ours, reference(tiny_zimage_dir, torch.float32), ["a portrait of an old fisherman"],
            latent_rtol=5e-2, levels=8, width=48, height=48)


def fp8_against_dequantized(tiny_zimage_dir, store_dir, dtype, rtol, levels):
    """The fp8 model (made by the real create) against diffusers holding its dequantized weights."""
    from ollimg.create import create
    from ollimg.manifest import Store
    from ollimg.runtime.torch_backend import mapped

    model = create(Store(store_dir), "tiny:fp8", tiny_zimage_dir, quantize="fp8")
    refs = model.tensors()
    fp8 = {t: r for t, r in refs.items() if r.dtype == "F8_E4M3"}
    assert len(fp8) > 10
    ours = load("tiny:fp8", backend="torch", device="cuda", dtype=dtype, models_dir=store_dir)
    ref = reference(tiny_zimage_dir, getattr(torch, dtype))
    for title, weight in fp8.items():
        component, name = title.split("/", 1)
        name = name.removeprefix("model.") if component == "text_encoder" else name
        dequantized = mapped(weight).float() * mapped(refs[title + "_scale"])[:, None]
        getattr(ref, component).get_parameter(name).data.copy_(dequantized)
    compare(ours, ref, ["a cat on the moon"], guidance=2.0, negative=["blurry"], width=48, height=48,
            latent_rtol=rtol, levels=levels)


@pytest.mark.parametrize("dtype, rtol, levels", [("float32", 1e-4, 1), ("bfloat16", 3e-2, 8)])
def test_fp8_model_on_cuda_against_its_dequantized_weights(tiny_zimage_dir, store_dir, dtype, rtol, levels, monkeypatch):
    """Weights dequantized per call (OLLIMG_FP8_MATMUL=off; float32 compute never multiplies in fp8)."""
    from ollimg.runtime.torch_backend import fp8_matmul

    monkeypatch.setenv("OLLIMG_FP8_MATMUL", "off")
    fp8_matmul.cache_clear()
    try:
        fp8_against_dequantized(tiny_zimage_dir, store_dir, dtype, rtol, levels)
    finally:
        fp8_matmul.cache_clear()


def test_fp8_matmul_on_cuda(tiny_zimage_dir, store_dir, monkeypatch):
    """On fp8 tensor cores (compute capability 8.9+) an fp8 model in bf16 multiplies in fp8, with
    activations scaled per token. Bound against diffusers with the dequantized weights: latents
    within 8e-2 of their largest value, pixels within 16 levels. Measured on the H100 (2026-11-22):
    4.4e-2 and 9, against 4.0e-3 and 4 when the weights are dequantized per call; the tiny random
    model is far more sensitive than a trained one (bench/fp8_quality.py: on the shapes model both
    paths are 0.47 levels from bf16 on average, with the same held-out scores)."""
    from ollimg.runtime import torch_backend

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.fail("this GPU has no fp8 tensor cores; run the CUDA tests on the project's H100 or H200")
    calls = []
    real = torch_backend.scaled_linear
    monkeypatch.setattr(torch_backend, "scaled_linear", lambda *a: calls.append(1) or real(*a))
    torch_backend.fp8_matmul.cache_clear()
    fp8_against_dequantized(tiny_zimage_dir, store_dir, "bfloat16", 8e-2, 16)
    assert calls  # the fp8 kernel ran (62 calls for the tiny model's run)


def test_offloaded_text_encoder_on_cuda(tiny_zimage_dir, monkeypatch):
    """OLLIMG_OFFLOAD: `always` uploads the text encoder per prompt (same latents, fewer resident
    bytes); `auto` does so only when the whole model would not fit the free GPU memory. Eager
    both: a resident encoder's layers are compiled, a streamed one's are not (compiled and eager
    agree within bounds, not bit for bit: test_compiled_and_eager_agree_on_cuda)."""
    monkeypatch.setenv("OLLIMG_COMPILE", "off")
    kept = load(tiny_zimage_dir, backend="torch", device="cuda", dtype="bfloat16")
    monkeypatch.setenv("OLLIMG_OFFLOAD", "always")
    offloaded = load(tiny_zimage_dir, backend="torch", device="cuda", dtype="bfloat16")
    assert offloaded.components.modules["text_encoder"] is None
    assert offloaded.backend.memory() < kept.backend.memory()
    a = kept.generate(["a cat"], width=32, height=32, steps=2, seed=1)
    b = offloaded.generate(["a cat"], width=32, height=32, steps=2, seed=1)
    assert (a.latents == b.latents).all()
    monkeypatch.setenv("OLLIMG_OFFLOAD", "auto")
    assert load(tiny_zimage_dir, backend="torch", device="cuda").components.modules["text_encoder"] is not None
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 30, 80 << 30))  # 1 GiB free
    assert load(tiny_zimage_dir, backend="torch", device="cuda").components.modules["text_encoder"] is None


def test_text_encoder_table_stays_in_cpu_memory_on_cuda(tiny_zimage_dir, tiny_klein_dir):
    """The embedding table is looked up in CPU memory (not read at load, not held on the GPU), the
    layers are on the GPU (the rest of the parity tests check the features)."""
    for model in (tiny_zimage_dir, tiny_klein_dir):
        pipe = load(model, backend="torch", device="cuda", dtype="bfloat16")
        encoder = pipe.components.modules["text_encoder"]
        assert encoder.embed_tokens.weight.device.type == "cpu"
        on_gpu = [p for n, p in encoder.named_parameters() if not n.startswith("embed_tokens.")]
        assert on_gpu and all(p.device.type == "cuda" for p in on_gpu)
        assert pipe.generate(["a cat"], width=32, height=32, steps=1).images


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_norm_on_cuda_equals_torchs(dtype):
    """The VAE's GroupNorm on the GPU is `group_stats` and `normed` (not torch's kernel), at a
    1024x1024 decode's largest shape: float32 within 1e-4 of the largest value; bf16 one rounding
    step at most from GroupNorm computed in float32 and the same value almost everywhere. (torch's
    bf16 kernel on CUDA is not that reference: it rounds each group's mean and 1/std to bf16, the
    dtype of its mean/rstd outputs, before applying them, up to 2^-9 relative; on the H200 it was
    more than one rounding step off ours in places.)"""
    import torch.nn.functional as F

    from ollimg.runtime.components.autoencoder_kl.torch import GroupNorm, group_stats, normed

    torch.manual_seed(0)
    for shape in [(1, 128, 1024, 1024), (1, 512, 128, 128), (2, 256, 64, 64)]:
        norm = GroupNorm(32, shape[1]).to("cuda", dtype)
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
        x = (torch.randn(shape, device="cuda") * 3 + 1.5).to(dtype)
        ref = F.group_norm(x, 32, norm.weight, norm.bias, norm.eps)
        got = norm(x)
        assert torch.equal(got, normed(x, group_stats(norm, x, [(0, shape[2])])))
        if dtype == torch.float32:
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
        else:
            exact = F.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float(), norm.eps)
            off, torchs = (got.float() - exact).abs(), (ref.float() - exact).abs()
            step = exact.abs().clamp_min(1e-2) * 2 ** -7  # one bf16 rounding step
            assert (off <= step).all(), f"{shape}: {off.max()} off (torch's kernel: {torchs.max()})"
            assert (got == exact.to(dtype)).float().mean() > 0.99


def test_compiled_and_eager_agree_on_cuda(tiny_zimage_dir, monkeypatch):
    """torch.compile'd blocks (OLLIMG_COMPILE=on) against OLLIMG_COMPILE=off, bf16 and fp32; the first
    run of a graph is reported once, and a new size or prompt length compiles nothing new."""
    import torch._dynamo.utils as dynamo

    monkeypatch.setenv("OLLIMG_COMPILE", "off")
    eager = load(tiny_zimage_dir, backend="torch", device="cuda", dtype="float32")
    monkeypatch.setenv("OLLIMG_COMPILE", "on")
    compiled = load(tiny_zimage_dir, backend="torch", device="cuda", dtype="float32")
    steps = []
    a = compiled.generate("a cat", width=64, height=48, steps=3, seed=1, on_step=steps.append)
    assert [s.status for s in steps if s.step == 0] == [torch_compile.NOTICE]
    b = eager.generate("a cat", width=64, height=48, steps=3, seed=1)
    assert abs(a.latents - b.latents).max() <= 1e-4 * abs(b.latents).max()
    graphs = dynamo.counters["stats"]["unique_graphs"]
    steps.clear()
    compiled.generate("a much longer prompt about a cat", width=96, height=32, steps=2, seed=2, on_step=steps.append)
    assert not [s for s in steps if s.status] and dynamo.counters["stats"]["unique_graphs"] == graphs


def flash_attention_here() -> bool:
    """FlashAttention 4 installed and this GPU one it runs on (else the runtime keeps SDPA)."""
    return (torch_attention.import_flash(torch_compile.flash_cache_dir())
            and torch.cuda.get_device_capability()[0] in (9, 10))


def test_flash_attention_on_cuda_is_as_close_to_exact_as_sdpa():
    """FlashAttention 4 (flash-attn-4 installed, Hopper or Blackwell) at Z-Image's head size and
    other shapes, with q/k/v strided as the fused projection leaves them: no further from float32
    math than SDPA's kernel."""
    if not flash_attention_here():
        pytest.skip("FlashAttention 4 is not installed, or this GPU is neither Hopper nor Blackwell")
    torch.manual_seed(0)
    for b, length, heads, dim in [(1, 4288, 4, 128), (2, 300, 3, 64), (1, 77, 2, 128)]:
        q, k, v = torch.randn(b, length, 3, heads, dim, device="cuda", dtype=torch.bfloat16).unbind(2)
        exact = torch.nn.functional.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v)))
        exact = exact.transpose(1, 2)
        flash = torch.ops.ollimg.flash_attention(q, k, v)
        sdpa = torch_attention.attention(q, k, v, torch.ones(b, length, dtype=torch.bool, device="cuda"))
        off, sdpas = (flash.float() - exact).abs().max(), (sdpa.float() - exact).abs().max()
        assert flash.shape == exact.shape and off <= 2 * sdpas + 1e-3, f"{(b, length, heads, dim)}: {off} vs {sdpas}"
    assert not torch_attention._flash_failed  # FlashAttention 4 computed these, not the SDPA fallback


def test_compiled_bf16_uses_flash_attention_where_installed(tiny_zimage_dir):
    """Compiled bf16 blocks run FlashAttention 4 where it is installed, without falling back to SDPA
    (test_bfloat16_on_cuda then holds them to diffusers)."""
    pipe = load(tiny_zimage_dir, backend="torch", device="cuda", dtype="bfloat16")
    calls = []
    op = torch_attention._flash_forward
    if op is not None:
        torch_attention._flash_forward = lambda *a: calls.append(1) or op(*a)
    try:
        pipe.generate("a cat", width=64, height=48, steps=2, seed=1)
    finally:
        if op is not None:
            torch_attention._flash_forward = op
    assert torch_attention._flash_on == flash_attention_here() and bool(calls) == flash_attention_here()
    assert not torch_attention._flash_failed  # it ran, not SDPA in its place


def test_graphed_text_encoder_equals_its_layers_on_cuda(tiny_zimage_dir):
    """Compiled, the text encoder's layers replay as CUDA graphs, one per prompt length, sharing one
    memory pool: the features equal the layers run one kernel at a time, bit for bit, while lengths
    alternate, after the oldest graph is dropped, and for a batch with its attention mask."""
    from ollimg.runtime.cuda_graphs import ShapeGraphs

    pipe = load(tiny_zimage_dir, backend="torch", device="cuda", dtype="bfloat16")
    pipe.components.begin()
    encoder = pipe.components.modules["text_encoder"]
    graphs = ShapeGraphs(encoder.hidden_states, limit=2)
    prompts = [[np.arange(n) + 1] for n in (5, 17, 5, 33, 17, 5)] + [[np.arange(9) + 1, np.arange(4) + 7]]
    with torch.inference_mode():
        for ids in prompts:
            length = 12 if len(ids) > 1 else None
            got, want = encoder(ids, length=length, layers=graphs), encoder(ids, length=length)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert len(graphs.graphs) == 2
        ids = pipe.tokenizer.encode(["a cat"], pipe.defaults.max_sequence_length)
        assert all(torch.equal(a, b) for a, b in zip(pipe.components.encode(ids), encoder(ids)))


def test_auto_compiles_from_a_loads_second_generation(tiny_zimage_dir, monkeypatch):
    """OLLIMG_COMPILE=auto (the default): a load's first generation runs eagerly, as OLLIMG_COMPILE=off
    does, and reports nothing; the next one, the compiler imported, compiles and says so."""
    monkeypatch.setenv("OLLIMG_COMPILE", "off")
    eager = load(tiny_zimage_dir, backend="torch", device="cuda", dtype="float32")
    b = eager.generate("a cat", width=64, height=48, steps=3, seed=1)
    monkeypatch.setenv("OLLIMG_COMPILE", "auto")
    pipe = load(tiny_zimage_dir, backend="torch", device="cuda", dtype="float32")
    blocks = pipe.components.modules["transformer"].layers
    steps = []
    first = pipe.generate("a cat", width=64, height=48, steps=3, seed=1, on_step=steps.append)
    assert not [s for s in steps if s.status] and all(block._compiled_call_impl is None for block in blocks)
    assert abs(first.latents - b.latents).max() <= 1e-6 * abs(b.latents).max()
    torch_compile.wait()
    steps.clear()
    second = pipe.generate("a cat", width=64, height=48, steps=3, seed=1, on_step=steps.append)
    assert [s.status for s in steps if s.step == 0] == [torch_compile.NOTICE]
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert abs(second.latents - b.latents).max() <= 1e-4 * abs(b.latents).max()


def test_a_denoising_step_is_queued_without_the_host_waiting_on_cuda(tiny_zimage_dir, tiny_klein_dir):
    """The denoiser's call for a step, either family, queues its GPU work without any implicit
    synchronisation (the timesteps go up through pinned memory), so the host can launch the next
    step while the GPU still runs this one: torch's sync debug mode turns an implicit wait into an
    error, here around each of the denoiser's calls."""
    for model in (tiny_zimage_dir, tiny_klein_dir):
        pipe = load(model, backend="torch", device="cuda", dtype="bfloat16")
        pipe.generate("a cat", width=64, height=48, steps=2, seed=1)  # compiles; caches the shape's tables
        inner, calls = pipe.components.transformer, []

        def strict(*args, **kwargs):
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                return inner(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(previous)
                calls.append(1)

        pipe.components.transformer = strict
        pipe.generate("a cat", width=64, height=48, steps=3, seed=2)
        assert len(calls) == 3, model


def test_fused_weights_on_cuda_equal_the_layers(tiny_zimage_dir, monkeypatch):
    """On CUDA q/k/v and gate/up are one GEMM each; the loaded modules hold no separate ones."""
    monkeypatch.setenv("OLLIMG_COMPILE", "off")
    pipe = load(tiny_zimage_dir, backend="torch", device="cuda", dtype="float32")
    block = pipe.components.modules["transformer"].layers[0]
    assert block.attention.to_qkv is not None and not hasattr(block.attention, "to_q")
    assert block.feed_forward.w13 is not None and not hasattr(block.feed_forward, "w1")


@pytest.mark.parametrize("stage_bytes", [None, 1000])
def test_weights_read_through_pinned_staging_equal_the_mapped_ones(tiny_zimage_dir, monkeypatch, stage_bytes):
    """Whole tensors per staging buffer, and (1000 bytes) each tensor in many odd-sized pieces."""
    from ollimg.runtime import torch_backend
    from ollimg.runtime.source import ModelSource
    from ollimg.runtime.torch_backend import mapped, upload

    if stage_bytes:
        monkeypatch.setattr(torch_backend, "STAGE_BYTES", stage_bytes)
    refs = ModelSource.from_dir(tiny_zimage_dir).tensors("transformer")
    for dtype in (torch.float32, torch.bfloat16):
        loaded = upload(refs, torch.device("cuda"), dtype)
        assert loaded.keys() == refs.keys()
        for name, ref in refs.items():
            assert torch.equal(loaded[name].cpu(), mapped(ref).to(dtype)), name
