"""The store and create as a library, on tmp_path (synthetic models; no subprocesses)."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.synthetic_model import listing, make_model

from ollimg import models
from ollimg.create import create
from ollimg.diffusers_dir import read_source
from ollimg.runtime.models.zimage.weights import FP8 as ZIMAGE_FP8
from ollimg.errors import InvalidModel, InvalidName, ModelNotFound
from ollimg.manifest import Manifest, Name, Store
from ollimg.manifest.manifest import CONFIG_TYPE, FILE_TYPE, TENSOR_TYPE


@pytest.fixture
def store(store_dir):
    return Store(store_dir)


@pytest.fixture
def model_dir(tmp_path):
    return make_model(tmp_path / "src")


def source_tensors(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(root.rglob("*.safetensors")):
        component = path.relative_to(root).parts[0]
        with safe_open(path, "pt") as f:
            for key in f.keys():
                out[f"{component}/{key}"] = f.get_tensor(key)
    return out


def stored(model, title) -> torch.Tensor:
    with safe_open(model.tensors(title)[title].path, "pt") as f:
        return f.get_tensor("data")


def test_create_writes_one_blob_per_tensor_and_file(store, model_dir):
    model = create(store, "test", model_dir)
    manifest = Manifest.parse(model.raw)
    assert manifest.config.media_type == CONFIG_TYPE
    titles = {layer.title for layer in manifest.layers}
    src = source_tensors(model_dir)
    assert {l.title for l in manifest.tensor_layers()} == set(src)
    assert {l.title for l in manifest.file_layers()} == {
        "model_index.json", "ollimg.json", "README.md", "scheduler/scheduler_config.json",
        "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "tokenizer/merges.txt",
        "transformer/config.json", "text_encoder/config.json", "vae/config.json"}
    assert not any(t.endswith(".safetensors.index.json") for t in titles)
    for layer in manifest.layers:  # only standard descriptor fields
        assert set(layer.to_json()) == {"mediaType", "digest", "size", "annotations"}
        assert layer.media_type in (TENSOR_TYPE, FILE_TYPE)
    for title, tensor in src.items():
        layer = next(l for l in manifest.layers if l.title == title)
        assert layer.shape == tuple(tensor.shape)
        assert torch.equal(stored(model, title), tensor)
    assert model.files()["tokenizer/merges.txt"].read_bytes() == (model_dir / "tokenizer/merges.txt").read_bytes()
    assert len(model.raw) < 4 * 1024 * 1024


def test_config_blob_describes_the_model(store, model_dir):
    config = create(store, "test", model_dir).config
    assert config["architecture"] == "ZImagePipeline"
    assert config["capabilities"] == ["image"]
    assert config["license"] == "apache-2.0"
    assert config["defaults"] == {"steps": 8, "guidance": 0.0}
    assert config["description"] == "test"
    assert config["quantization"] is None and config["dtype"] is None
    assert config["source"] == {"kind": "diffusers", "path": str(model_dir)}
    src = source_tensors(model_dir)
    te = config["components"]["text_encoder"]
    assert te["class_name"] == "Qwen3Model" and te["library"] == "transformers"
    assert te["parameters"] == sum(t.numel() for k, t in src.items() if k.startswith("text_encoder/"))
    assert te["dtypes"] == {"F16": te["parameters"]}
    assert config["components"]["tokenizer"] == {"library": "transformers", "class_name": "Qwen2Tokenizer"}
    assert config["parameters"] == sum(t.numel() for t in src.values())


def test_license_from_ollimg_json_wins(store, tmp_path):
    src = make_model(tmp_path / "m", extra={"license": "mit", "defaults": {"steps": 4}})
    config = create(store, "m", src).config
    assert config["license"] == "mit" and config["defaults"] == {"steps": 4}


def test_second_create_deduplicates_every_tensor(store, model_dir):
    first = create(store, "a", model_dir)
    blobs_before = set(store.blobs.digests())
    second = create(store, "b", model_dir)
    assert first.new_bytes > 0 and first.deduplicated_bytes == 0
    tensor_bytes = sum(l.size for l in second.manifest.layers)
    assert second.deduplicated_bytes == tensor_bytes
    assert second.new_bytes <= second.manifest.config.size  # at most the config (its time differs)
    assert set(store.blobs.digests()) - blobs_before <= {second.manifest.config.digest}


def _hf_cache(tmp_path, model_dir) -> Path:
    """Lay `model_dir` out like huggingface_hub's cache: snapshot files are symlinks into blobs/."""
    repo = tmp_path / "hub" / "models--tongyi-mai--z-image-turbo"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    (repo / "blobs").mkdir()
    for path in model_dir.rglob("*"):
        if path.is_file():
            blob = repo / "blobs" / f"{abs(hash(str(path))):x}"
            blob.write_bytes(path.read_bytes())
            link = repo / "snapshots" / rev / path.relative_to(model_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "snapshots" / rev / ".cache").mkdir()
    (repo / "snapshots" / rev / ".cache" / "junk.json").write_text("{")
    return repo


def test_hf_cache_repo_and_snapshot_dirs_import_like_the_plain_dir(store, tmp_path, model_dir):
    plain = create(store, "plain", model_dir).manifest.layers
    repo = _hf_cache(tmp_path, model_dir)
    from_repo = create(store, "repo", repo)
    snapshot = next((repo / "snapshots").iterdir())
    from_snapshot = create(store, "snap", snapshot)
    assert from_repo.manifest.layers == plain == from_snapshot.manifest.layers
    assert from_repo.config["source"]["repo"] == "tongyi-mai/z-image-turbo"
    assert from_repo.config["source"]["revision"] == snapshot.name
    assert from_repo.deduplicated_bytes > 0


def test_dtype_bf16_converts_float_weights(store, model_dir):
    model = create(store, "bf", model_dir, dtype="bf16")
    src = source_tensors(model_dir)
    for title, tensor in src.items():
        got = stored(model, title)
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, tensor.to(torch.bfloat16))
    assert model.config["dtype"] == "bf16"
    assert set(model.config["components"]["transformer"]["dtypes"]) == {"BF16"}


def test_fp8_quantizes_linear_weights_with_per_channel_scales(store, model_dir):
    model = create(store, "q", model_dir, quantize="fp8")
    quant = model.config["quantization"]
    src = source_tensors(model_dir)
    expected = {
        "transformer/layers.0.attention.to_q.weight", "transformer/layers.0.attention.to_k.weight",
        "transformer/layers.0.feed_forward.w1.weight", "transformer/layers.0.feed_forward.w2.weight",
        "transformer/layers.1.attention.to_q.weight", "transformer/layers.1.attention.to_k.weight",
        "transformer/layers.1.feed_forward.w1.weight", "transformer/layers.1.feed_forward.w2.weight",
        "text_encoder/model.layers.0.self_attn.q_proj.weight",
    }
    assert set(quant["tensors"]) == expected
    assert quant["scheme"] == "fp8_e4m3"
    layers = {l.title: l for l in model.manifest.tensor_layers()}
    errors = []
    for title, tensor in src.items():
        if title in expected:
            assert layers[title].dtype == "F8_E4M3" and layers[title].shape == tuple(tensor.shape)
            assert layers[title + "_scale"].dtype == "F32" and layers[title + "_scale"].shape == tensor.shape[:1]
            q, scale = stored(model, title), stored(model, title + "_scale")
            assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
            deq = q.float() * scale[:, None]
            w = tensor.float()
            err = float((deq - w).norm() / w.norm())
            assert err < 0.05
            assert math.isclose(quant["tensor_rel_rms_error"][title], err, rel_tol=1e-3)
            assert torch.allclose(scale, w.abs().amax(dim=1) / 448)
            errors.append(err)
        else:
            assert torch.equal(stored(model, title), tensor), title  # kept bit for bit
            assert title + "_scale" not in layers
    assert 0 < quant["rel_rms_error"] <= quant["max_rel_rms_error"] == pytest.approx(max(errors), rel=1e-3)


def test_fp8_transformer_is_at_most_055_of_bf16_at_real_zimage_shapes():
    """The rule applied to the real Z-Image-Turbo transformer and text encoder (diffusers/transformers
    classes on the meta device, real configs): stored bytes vs an all-bf16 copy."""
    from diffusers import ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from ollimg.blobs import TensorRef
    from ollimg.quantize import fp8

    with torch.device("meta"):
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2,
            n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0,
            t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])
        encoder = Qwen3Model(Qwen3Config(
            hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True))
    for component, module, prefix, limit in (("transformer", transformer, "", 0.55), ("text_encoder", encoder, "model.", 0.6)):
        fp8_bytes = bf16_bytes = 0
        quantized = 0
        for name, tensor in module.state_dict().items():
            ref = TensorRef(Path("x"), 0, tensor.numel() * 4, "F32", tuple(tensor.shape))
            bf16_bytes += tensor.numel() * 2
            if fp8.quantizes(f"{component}/{prefix}{name}", ref, ZIMAGE_FP8):
                fp8_bytes += tensor.numel() + tensor.shape[0] * 4
                quantized += 1
            else:
                fp8_bytes += tensor.numel() * 2
        assert quantized > 200
        print(component, "fp8/bf16 size ratio", round(fp8_bytes / bf16_bytes, 4))
        assert fp8_bytes / bf16_bytes <= limit, (component, fp8_bytes / bf16_bytes)


def test_fp8_rule_keeps_precision_critical_tensors():
    from ollimg.blobs import TensorRef
    from ollimg.quantize import fp8

    def q(title, shape=(64, 64), dtype="F32"):
        return fp8.quantizes(title, TensorRef(Path("x"), 0, 0, dtype, shape), ZIMAGE_FP8)

    assert q("transformer/layers.0.attention.to_q.weight")
    assert q("transformer/noise_refiner.0.feed_forward.w2.weight")
    assert q("text_encoder/model.layers.3.mlp.down_proj.weight")
    for kept in ("transformer/layers.0.attention.to_q.bias", "transformer/layers.0.adaLN_modulation.0.weight",
                 "transformer/t_embedder.mlp.0.weight", "transformer/cap_embedder.1.weight",
                 "transformer/all_x_embedder.2-1.weight", "transformer/all_final_layer.2-1.linear.weight",
                 "transformer/x_pad_token", "text_encoder/model.embed_tokens.weight", "text_encoder/lm_head.weight",
                 "vae/decoder.mid_block.attentions.0.to_q.weight", "transformer/layers.0.attention.norm_q.weight"):
        assert not q(kept), kept
    assert not q("transformer/layers.0.attention.to_q.weight", shape=(64,))
    assert not q("transformer/layers.0.attention.to_q.weight", dtype="I32")


def test_rm_keeps_blobs_other_models_use(store, tmp_path, model_dir):
    a = create(store, "a", model_dir)
    other = make_model(tmp_path / "other", seed=1)  # same files (configs), other tensors
    b = create(store, "b", other)
    shared = {d.digest for d in a.manifest.blobs()} & {d.digest for d in b.manifest.blobs()}
    assert shared  # the configs and tokenizer files
    result = models.remove(store, [Name.parse("a")])
    assert result.names == ["a:latest"] and result.blobs > 0
    remaining = set(store.blobs.digests())
    assert shared <= remaining
    assert not ({d.digest for d in a.manifest.blobs()} - shared) & remaining
    assert models.verify(store).ok


def test_rm_of_an_unknown_name_removes_nothing(store, model_dir):
    create(store, "a", model_dir)
    before = listing(store.root)
    with pytest.raises(ModelNotFound):
        models.remove(store, [Name.parse("a"), Name.parse("nope")])
    assert listing(store.root) == before


def test_cp_shares_blobs_and_rm_of_one_keeps_the_other(store, model_dir):
    a = create(store, "a", model_dir)
    b = models.copy(store, Name.parse("a"), Name.parse("ns/b:v1"))
    assert b.raw == a.raw and b.name.display() == "ns/b:v1"
    models.remove(store, [Name.parse("a")])
    assert models.verify(store, Name.parse("ns/b:v1")).ok
    with pytest.raises(ModelNotFound):
        models.copy(store, Name.parse("a"), Name.parse("c"))


def test_prune_removes_unreferenced_blobs_and_temp_files(store, model_dir):
    create(store, "a", model_dir)
    before = listing(store.root)
    orphan = store.blobs.put_bytes(b"orphan")
    (store.blobs.root / ".tmp-stale").write_bytes(b"x" * 10)
    (store.manifest_path(Name.parse("a")).parent / ".tmp-stale").write_bytes(b"{}")
    result = models.prune(store)
    assert (result.blobs, result.temp_files) == (1, 2)
    assert not store.blobs.has(orphan)
    assert listing(store.root) == before


def test_verify_reports_corrupt_and_missing_blobs(store, model_dir):
    model = create(store, "a", model_dir)
    assert models.verify(store).ok
    layers = model.manifest.tensor_layers()
    path = store.blobs.path(layers[0].digest)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    store.blobs.path(layers[1].digest).unlink()
    result = models.verify(store, Name.parse("a"))
    assert not result.ok and len(result.bad) == 2
    assert any(layers[0].digest in line and "hashes to" in line for line in result.bad)
    assert any(layers[1].digest in line and "missing" in line for line in result.bad)


def test_info_for_show(store, model_dir):
    model = create(store, "q", model_dir, quantize="fp8", dtype="bf16")
    data = models.info(model)
    assert data["architecture"] == "ZImagePipeline" and data["license"] == "apache-2.0"
    assert data["quantization"]["scheme"] == "fp8_e4m3" and data["quantization"]["tensors"] == 9
    assert 0 < data["quantization"]["rel_rms_error"] < 0.05
    assert data["size_on_disk"] == sum(store.blobs.path(d).stat().st_size for d in {b.digest for b in model.manifest.blobs()})
    assert json.dumps(data)


@pytest.mark.parametrize("break_it, message", [
    (lambda d: (d / "model_index.json").unlink(), "not a diffusers model directory"),
    (lambda d: (d / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink(), "shard .* is missing"),
    (lambda d: (d / "vae").rename(d / "vae2"), "lists 'vae'"),
    (lambda d: (d / "transformer" / "config.json").write_text("{"), "not valid JSON"),
])
def test_bad_sources_leave_the_store_unchanged(store, model_dir, break_it, message):
    create(store, "good", model_dir)
    before = listing(store.root)
    break_it(model_dir)
    with pytest.raises(InvalidModel, match=message):
        create(store, "bad", model_dir)
    assert listing(store.root) == before


def test_invalid_name_and_options_are_refused(store, model_dir):
    with pytest.raises(InvalidName):
        create(store, "Bad Name!", model_dir)
    with pytest.raises(Exception, match="--quantize"):
        create(store, "x", model_dir, quantize="int3")
    assert listing(store.root) == []


def test_legacy_ollama_manifest_fields_are_read(store, tmp_path):
    import numpy as np

    from ollimg.blobs import tensor_blob_header

    data = np.arange(6, dtype=np.float32)
    digest = store.blobs.put_bytes(tensor_blob_header("F32", (2, 3)) + data.tobytes())
    config = store.blobs.put_bytes(b"{}")
    size = store.blobs.path(digest).stat().st_size
    raw = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.ollama.image.tensor", "digest": digest, "size": size,
                    "name": "transformer/x.weight", "dtype": "F32", "shape": [2, 3]}],
    }).encode()
    model = store.put_manifest(Name.parse("old"), raw)
    layer = model.manifest.layers[0]
    assert (layer.title, layer.dtype, layer.shape, layer.is_tensor) == ("transformer/x.weight", "F32", (2, 3), True)
    ref = model.tensors("transformer/")["transformer/x.weight"]
    assert ref.shape == (2, 3) and store.blobs.path(digest).read_bytes()[ref.offset:] == data.tobytes()
    assert models.verify(store, Name.parse("old")).ok


def test_put_manifest_refuses_a_missing_blob(store):
    from ollimg.errors import StoreError

    config = store.blobs.put_bytes(b"{}")
    raw = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": CONFIG_TYPE, "digest": config, "size": 2},
                      "layers": [{"mediaType": FILE_TYPE, "digest": "sha256:" + "0" * 64, "size": 5}]}).encode()
    with pytest.raises(StoreError, match="missing"):
        store.put_manifest(Name.parse("x"), raw)
    assert store.models() == []


def test_progress_reports_every_tensor_byte_in_order(store, model_dir):
    seen = []
    create(store, "p", model_dir, on_progress=seen.append)
    importing = [p for p in seen if p.status.startswith("importing")]
    total = sum(ref.nbytes for ref in read_source(model_dir).tensors.values())
    assert importing and all(p.total == total for p in importing)
    assert [p.completed for p in importing] == sorted(p.completed for p in importing)
    assert importing[-1].completed == total
    assert seen[-1].status == "success"


def test_create_over_an_existing_name_replaces_it_and_prune_frees_the_old_blobs(store, tmp_path, model_dir):
    old = create(store, "m", model_dir)
    new = create(store, "m", make_model(tmp_path / "other", seed=5))
    assert [m.name.display() for m in store.models()] == ["m:latest"]
    assert store.get(Name.parse("m")).digest == new.digest != old.digest
    only_old = {d.digest for d in old.manifest.blobs()} - {d.digest for d in new.manifest.blobs()}
    assert only_old and models.prune(store).blobs == len(only_old)
    assert models.verify(store).ok
