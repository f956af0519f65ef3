"""Each MLX component against its diffusers/transformers module holding the same random weights.

The reference modules are built tiny in the test, every parameter (norm weights, biases and pad
tokens included) is randomised, and the weights are copied to MLX through numpy. fp32 only: these
tests pin the arithmetic; the pipeline parity tests cover dtypes and the loading path.
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'mlx[cpu]' on Linux)")
import torch  # noqa: E402

pytestmark = pytest.mark.mlx


def randomise(module, seed: int) -> dict[str, np.ndarray]:
    """Give every parameter a random value (norms near 1) and return them as float32 numpy."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * r)
            elif p.ndim >= 2:
                p.copy_(r / np.sqrt(np.prod(p.shape[1:])))
            else:
                p.copy_(0.2 * r)
            out[name] = p.detach().float().numpy().copy()
    return out


def close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """Max abs error relative to the reference's largest magnitude."""
    scale = float(np.abs(expected).max())
    err = float(np.abs(actual - expected).max())
    assert actual.shape == expected.shape
    assert err <= rtol * scale, f"max error {err:.3g} vs {rtol * scale:.3g} ({rtol} x max {scale:.3g})"


def test_vae_decoder_matches_diffusers():
    from diffusers import AutoencoderKL

    from ollimg.runtime.mlx_backend import set_weights
    from ollimg.runtime.components.autoencoder_kl.config import AutoencoderKLConfig as VaeConfig
    from ollimg.runtime.components.autoencoder_kl.mlx import VaeDecoder as VAE, mlx_layout

    ref = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    ).eval()
    weights = randomise(ref, 0)
    vae = VAE(VaeConfig.from_json(dict(ref.config)))
    decoder = {k: mx.array(mlx_layout(k, v)) for k, v in weights.items() if k.startswith("decoder.")}
    set_weights(vae, decoder, "vae", mx.float32)

    latents = np.random.default_rng(1).standard_normal((2, 16, 6, 10)).astype(np.float32)
    with torch.no_grad():
        expected = ref.decode(torch.from_numpy(latents)).sample.numpy()
    actual = np.array(vae.decode(mx.array(latents))).transpose(0, 3, 1, 2)
    close(actual, expected)


def test_set_weights_refuses_missing_and_misshapen():
    from ollimg.errors import InvalidModel
    from ollimg.runtime.mlx_backend import set_weights
    from ollimg.runtime.components.autoencoder_kl.mlx import ResnetBlock

    block = ResnetBlock(8, 16, 4)
    from mlx.utils import tree_flatten

    good = {k: v for k, v in tree_flatten(block.parameters())}
    missing = dict(good)
    missing.pop("conv1.bias")
    with pytest.raises(InvalidModel, match="missing weight 'conv1.bias'"):
        set_weights(block, missing, "vae", mx.float32)
    with pytest.raises(InvalidModel, match="unexpected weight 'extra'"):
        set_weights(block, {**good, "extra": mx.zeros(3)}, "vae", mx.float32)
    with pytest.raises(InvalidModel, match="'norm1.weight' has shape"):
        set_weights(block, {**good, "norm1.weight": mx.zeros(9)}, "vae", mx.float32)


def tiny_dit():
    from diffusers import ZImageTransformer2DModel

    ref = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=24, rope_theta=256.0,
        t_scale=1000.0, axes_dims=[8, 12, 12], axes_lens=[256, 64, 64],
    ).eval()
    return ref, randomise(ref, 2)


@pytest.mark.parametrize(
    "size, cap_lens",
    [((8, 8), [7]), ((6, 10), [40, 5, 33]), ((2, 2), [32, 64])],
    ids=["square", "non-square-batch-of-lengths", "tiny-full-pads"],
)
def test_transformer_matches_diffusers(size, cap_lens):
    from ollimg.runtime.mlx_backend import set_weights
    from ollimg.runtime.models.zimage.config import TransformerConfig
    from ollimg.runtime.models.zimage.mlx.transformer import ZImageTransformer

    ref, weights = tiny_dit()
    dit = ZImageTransformer(TransformerConfig.from_json(dict(ref.config)))
    set_weights(dit, {k: mx.array(v) for k, v in weights.items()}, "transformer", mx.float32)

    rng = np.random.default_rng(3)
    b = len(cap_lens)
    latents = rng.standard_normal((b, 16, *size)).astype(np.float32)
    t = rng.uniform(0, 1, b).astype(np.float32)
    caps = [rng.standard_normal((n, 24)).astype(np.float32) for n in cap_lens]
    with torch.no_grad():
        out = ref(
            [torch.from_numpy(x)[:, None] for x in latents], torch.from_numpy(t),
            [torch.from_numpy(c) for c in caps], return_dict=False,
        )[0]
    expected = np.stack([o[:, 0].numpy() for o in out])
    actual = np.array(dit(mx.array(latents), mx.array(t), [mx.array(c) for c in caps]))
    close(actual, expected)


def test_text_encoder_matches_transformers_hidden_states_minus_2():
    from transformers import Qwen3Config, Qwen3Model

    from ollimg.runtime.mlx_backend import set_weights
    from ollimg.runtime.components.qwen3.config import Qwen3Config as TextEncoderConfig
    from ollimg.runtime.components.qwen3.mlx import TextEncoder
    from ollimg.runtime.components.qwen3 import weights as qwen3_weights

    cfg = dict(
        vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1e6,
        attention_bias=False, max_position_embeddings=512, tie_word_embeddings=True,
    )
    ref = Qwen3Model(Qwen3Config(**cfg)).eval()
    weights = randomise(ref, 4)
    enc = TextEncoder(TextEncoderConfig.from_json(cfg), outputs=(2,))  # hidden_states[-2] of 3 layers
    kept = {k: mx.array(v) for k, v in weights.items() if not qwen3_weights.ignored(enc.cfg, 2).match(k)}
    assert len(kept) == len(weights) - 12
    set_weights(enc, kept, "text_encoder", mx.float32)

    rng = np.random.default_rng(5)
    lens = [37, 11]
    ids = np.zeros((2, 37), dtype=np.int64)
    mask = np.zeros((2, 37), dtype=bool)
    for i, n in enumerate(lens):
        ids[i, :n] = rng.integers(0, 300, n)
        ids[i, n:] = 299  # the pad id
        mask[i, :n] = True
    with torch.no_grad():
        hidden = ref(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True
        ).hidden_states[-2].numpy()
    actual = enc([ids[i, :n] for i, n in enumerate(lens)])
    for i, n in enumerate(lens):
        close(np.array(actual[i]), hidden[i, :n])
    # Padded to a length with an attention mask, as FLUX.2 conditions on it: the pad rows too.
    padded = enc([ids[i, :n] for i, n in enumerate(lens)], length=37, pad_id=299)
    for i in range(2):
        close(np.array(padded[i]), hidden[i])
    # Hidden state 0 is the embeddings (a one-layer encoder's hidden_states[-2]).
    both = TextEncoder(TextEncoderConfig.from_json(cfg), outputs=(0, 2))
    set_weights(both, kept, "text_encoder", mx.float32)
    with torch.no_grad():
        zero = ref.embed_tokens(torch.from_numpy(ids)).numpy()
    close(np.array(both([ids[0, :37]])[0]), np.concatenate([zero[0], hidden[0]], axis=-1))


def test_mlx_allocation_failure_is_out_of_memory(monkeypatch):
    """MLX reports a failed allocation as a RuntimeError naming malloc; the runtime needs OutOfMemory."""
    from ollimg.errors import OutOfMemory
    from ollimg.runtime import mlx_backend as zmlx

    def fail(*arrays):
        raise RuntimeError("[metal::malloc] Attempting to allocate 90000000000 bytes which is greater than the "
                           "maximum allowed buffer size of 77309411328 bytes.")

    monkeypatch.setattr(zmlx.mx, "eval", fail)
    with pytest.raises(OutOfMemory, match="out of memory on MLX"):
        zmlx.evaluate(mx.zeros(2))
    monkeypatch.setattr(zmlx.mx, "eval", lambda *a: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):
        zmlx.evaluate(mx.zeros(2))


def test_backend_device_and_dtype_choices():
    from ollimg.errors import InvalidInput
    from ollimg.runtime.mlx_backend import MlxBackend

    cpu = MlxBackend(device="cpu")
    assert (cpu.name, cpu.processor, cpu.dtype, cpu.compile) == ("mlx", "MLX", "float32", False)
    assert MlxBackend(device="cpu", dtype="bfloat16").mx_dtype == mx.bfloat16
    with pytest.raises(InvalidInput, match="unknown mlx device 'cuda'"):
        MlxBackend(device="cuda")
    with pytest.raises(InvalidInput, match="unsupported dtype 'int8'"):
        MlxBackend(device="cpu", dtype="int8")
    if not mx.metal.is_available():
        with pytest.raises(InvalidInput, match="no Metal GPU"):
            MlxBackend(device="gpu")
    x = cpu.from_numpy(np.array([[3.0, 4.0]], dtype=np.float32))
    assert cpu.norm(x) == pytest.approx(5.0) and cpu.to_numpy(cpu.concat([x, x])).shape == (2, 2)
