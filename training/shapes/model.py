"""The shapes model: Z-Image's architecture at a small size, built with diffusers/transformers.

Owns the component configs, building them from scratch, and saving the whole model in the
diffusers layout of Tongyi-MAI/Z-Image-Turbo (model_index.json, scheduler/, text_encoder/,
tokenizer/, transformer/, vae/).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from transformers import Qwen3Config, Qwen3ForCausalLM

from fixtures.zimage_index import MODEL_INDEX
from training.shapes import tokenizer as tokenizer_mod

TEXT = dict(
    hidden_size=256, intermediate_size=768, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=64, hidden_act="silu", rms_norm_eps=1e-6,
    max_position_embeddings=512, attention_bias=False, tie_word_embeddings=True,
)
TRANSFORMER = dict(
    all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=256, n_layers=6,
    n_refiner_layers=2, n_heads=4, n_kv_heads=4, norm_eps=1e-5, qk_norm=True,
    cap_feat_dim=TEXT["hidden_size"], rope_theta=256.0, t_scale=1000.0,
    axes_dims=[16, 24, 24], axes_lens=[1536, 512, 512],
)
# Three blocks: 4x downsampling, a 32x32x16 latent for a 128x128 image (256 image tokens at patch
# 2). The first model's 8x VAE (four blocks) drew no small star: its 16x16 latent gives a 22-pixel
# star under 3x3 latent pixels (training/shapes/README.md).
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16,
    down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 64, 128], layers_per_block=1, act_fn="silu",
    norm_num_groups=32, sample_size=128, use_quant_conv=False, use_post_quant_conv=False,
    mid_block_add_attention=True, force_upcast=True, scaling_factor=1.0, shift_factor=0.0,
)
SCHEDULER = dict(num_train_timesteps=1000, use_dynamic_shifting=False, shift=3.0)


def build_vae(channels: list[int] | None = None, layers: int | None = None) -> AutoencoderKL:
    """The VAE; `channels` (one per block) and `layers` (per block) override the defaults."""
    config = dict(VAE)
    if channels:
        config["block_out_channels"] = list(channels)
        n = len(channels)
        config["down_block_types"], config["up_block_types"] = ["DownEncoderBlock2D"] * n, ["UpDecoderBlock2D"] * n
    if layers:
        config["layers_per_block"] = layers
    return AutoencoderKL(**config)


def build_text_encoder(vocab_size: int) -> Qwen3ForCausalLM:
    im_end = vocab_size - 24  # <|im_end|> is the third added token of 26
    config = Qwen3Config(
        vocab_size=vocab_size, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        bos_token_id=im_end - 2, eos_token_id=im_end, **TEXT,
    )
    return Qwen3ForCausalLM(config)


def build_transformer() -> ZImageTransformer2DModel:
    return ZImageTransformer2DModel(**TRANSFORMER)


def _z_image_text_config(path: Path) -> None:
    """Write the text encoder config the way Z-Image ships it (top-level rope_theta)."""
    config = json.loads(path.read_text())
    rope = config.pop("rope_parameters", None) or {}
    config["rope_theta"] = rope.get("rope_theta", 1e6)
    config["rope_scaling"] = None
    config["torch_dtype"] = config.pop("dtype", "float32")
    config.pop("layer_types", None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save(out: Path, tok, text_encoder: Qwen3ForCausalLM, transformer, vae, dtype=torch.float32) -> None:
    """The diffusers layout. Weights are saved in `dtype`; configs keep their keys upstream's way."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    FlowMatchEulerDiscreteScheduler(**SCHEDULER).save_pretrained(out / "scheduler")
    tokenizer_mod.save(tok, out / "tokenizer")
    text_encoder.to(dtype).save_pretrained(out / "text_encoder")
    _z_image_text_config(out / "text_encoder" / "config.json")
    transformer.to(dtype).save_pretrained(out / "transformer")
    vae.to(dtype).save_pretrained(out / "vae")
