"""The shapes training resumes from its checkpoint: N DiT steps in one call equal N/2, a
checkpoint and N/2 more, to the bit (on the CPU every kernel is deterministic, so anything the
checkpoint failed to restore — a weight, an AdamW moment, the EMA, an RNG state, the data
position, the schedule — would change some bit). Runs train.py's real main() on a tiny
configuration of the same architecture; the held-out VAE check, reporting only, is stubbed (it
scores 160 images)."""

import json
import shutil

import pytest
import torch

from training.shapes import checkpoint, model, train

pytestmark = pytest.mark.slow  # four tiny trainings: about 30 s on a loaded 2-core machine

N, LR = 4, 1e-3
TINY = (
    (model.TEXT, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32)),
    (model.TRANSFORMER, dict(dim=64, n_layers=1, n_refiner_layers=1, n_heads=1, n_kv_heads=1, cap_feat_dim=64)),
    (model.VAE, dict(block_out_channels=[8, 8, 8], norm_num_groups=8)),
)


def run(out, *extra):
    train.main(["--out", str(out), "--vae-steps", "1", "--vae-batch", "2", "--batch", "2", "--dit-steps", str(N),
                "--dit-warmup", "2", "--lr", str(LR), "--eval-steps", *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """one: N steps in one call; two: N/2, then resumed from the carried checkpoint (no full.pt)
    on the same machine, where the first call left its full.pt (two/ckpt); three: resumed from the
    carried checkpoint elsewhere, with no full.pt of it."""
    root = tmp_path_factory.mktemp("resume")
    with pytest.MonkeyPatch.context() as mp:
        for table, small in TINY:
            for key, value in small.items():
                mp.setitem(table, key, value)
        mp.setattr(train, "LATENT_STATS_IMAGES", (2, 4))
        mp.setattr(train, "check_vae", lambda vae, device: {"stubbed": True})
        run(root / "one")
        run(root / "two", "--call-steps", str(N // 2))
        assert not (root / "two" / "model").exists()
        shutil.copytree(root / "two" / "ckpt", root / "carried", ignore=shutil.ignore_patterns(checkpoint.FULL))
        run(root / "two", "--resume", str(root / "carried"))  # full.pt from two/ckpt, the warm machine's
        run(root / "three", "--resume", str(root / "carried"))
    return root


def full(directory):
    return torch.load(directory / "ckpt" / checkpoint.FULL, weights_only=True)


def state(directory):
    return json.loads((directory / "ckpt" / checkpoint.STATE).read_text())


def assert_same(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def test_n_steps_equal_n_over_2_a_checkpoint_and_n_over_2_more_to_the_bit(runs):
    one, two = full(runs / "one"), full(runs / "two")
    assert_same(one["params"], two["params"])
    assert_same(one["ema"], two["ema"])
    assert_same(one["opt"], two["opt"])
    assert any(not torch.equal(one["params"][k], one["ema"][k]) for k in one["params"])  # it trained
    a, b = state(runs / "one"), state(runs / "two")
    for key in ("step", "total", "rng", "digest", "shift", "scale", "rewarm_from", "recipe"):
        assert a[key] == b[key], key
    assert [(c["from"], c["to"], c["resumed"]) for c in b["calls"]] == [(0, N // 2, None), (N // 2, N, "exact")]
    assert (runs / "two" / "model" / "transformer").is_dir() and (runs / "two" / "train-info.json").is_file()


def test_without_full_pt_it_goes_on_from_the_bf16_weights_rewarmed(runs):
    _, start, _ = checkpoint.read(runs / "carried")
    s = state(runs / "three")
    assert s["calls"][-1]["resumed"] == "from bf16 weights" and s["rewarm_from"] == N // 2
    after = full(runs / "three")["params"]
    # AdamW moves a weight by at most about lr per step; re-warmed, by lr/100, 2 lr/100, ...
    bound = 2 * LR * sum(k + 1 for k in range(N // 2)) / train.REWARM
    moved = max((after[k] - start[k].float()).abs().max().item() for k in after)
    assert 0 < moved <= bound


def test_a_resumed_run_keeps_its_recipe_and_its_weights_whole(runs, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(runs / "carried", ckpt)
    with pytest.raises(SystemExit, match="--lr 0.002 differs from the checkpoint's 0.001"):
        train.main(["--out", str(tmp_path), "--resume", str(ckpt), "--lr", "2e-3"])
    part = ckpt / json.loads((ckpt / checkpoint.STATE).read_text())["parts"][0]
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(SystemExit, match="do not match"):
        train.main(["--out", str(tmp_path), "--resume", str(ckpt)])
    with pytest.raises(SystemExit, match="no checkpoint"):
        train.main(["--out", str(tmp_path), "--resume", str(tmp_path / "none")])


def test_pack_keeps_bf16_weights_exactly_in_fewer_bytes():
    torch.manual_seed(0)
    weights = {"a": torch.randn(300, 257) * 0.02, "b": torch.randn(7), "c": torch.zeros(3, 3)}
    blob = checkpoint.pack(weights)
    back = checkpoint.unpack(blob)
    assert all(torch.equal(back[k], weights[k].to(torch.bfloat16)) for k in weights)
    assert len(blob) < 0.8 * 2 * sum(w.numel() for w in weights.values())


def test_vae_only_trains_and_scores_the_vae_alone(tmp_path, monkeypatch):
    for table, small in TINY:
        for key, value in small.items():
            monkeypatch.setitem(table, key, value)
    monkeypatch.setattr(train, "LATENT_STATS_IMAGES", (2, 4))
    monkeypatch.setattr(train, "check_vae", lambda vae, device: {"kind": 0.5})
    train.main(["--out", str(tmp_path), "--vae-only", "--vae-steps", "1", "--vae-batch", "2",
                "--vae-channels", "8", "16", "--vae-layers", "2", "--edge-weight", "10", "--decoder-steps", "1"])
    info = json.loads((tmp_path / "vae-info.json").read_text())
    assert info["vae_heldout"] == {"kind": 0.5} and info["args"]["vae_channels"] == "[8, 16]"
    assert info["vae_heldout_refined"] == {"kind": 0.5}  # and what a refined decoder would draw
    assert info["vae_parameters"] == sum(p.numel() for p in model.build_vae([8, 16], 2).parameters())
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "model").exists()
    # the DiT trains on that VAE: its weights and recipe, not a new one
    vae = model.build_vae([8, 16], 2)
    vae.load_state_dict({k[4:]: v.float() for k, v in checkpoint.read(tmp_path / "vae")[1].items()})
    with pytest.raises(SystemExit, match="--edge-weight 3.0 differs"):
        train.main(["--out", str(tmp_path / "dit"), "--vae-from", str(tmp_path / "vae"), "--edge-weight", "3"])
    monkeypatch.setattr(train, "train_vae", lambda *a: pytest.fail("trained a VAE"))
    train.main(["--out", str(tmp_path / "dit"), "--vae-from", str(tmp_path / "vae"), "--batch", "2",
                "--dit-steps", "1", "--dit-warmup", "1", "--call-steps", "1"])
    state = json.loads((tmp_path / "dit" / "ckpt" / checkpoint.STATE).read_text())
    assert state["recipe"]["vae_channels"] == [8, 16] and state["recipe"]["edge_weight"] == 10.0
    assert state["vae_heldout"] == {"kind": 0.5} and state["shift"] == info["shift"]
    weights = checkpoint.read(tmp_path / "dit" / "ckpt")[1]
    assert all(torch.equal(weights[f"vae.{k}"], v.to(torch.bfloat16)) for k, v in vae.state_dict().items())
    # a decoder refinement tried on that VAE alone: nothing trained but the decoder
    train.main(["--out", str(tmp_path / "trial"), "--vae-only", "--vae-from", str(tmp_path / "vae"),
                "--decoder-steps", "2", "--worst-weight", "0.3"])
    trial = json.loads((tmp_path / "trial" / "vae-info.json").read_text())
    assert trial["vae_heldout_refined"] == {"kind": 0.5} and trial["args"]["worst_weight"] == "0.3"


def test_edge_weights_mark_the_pixels_beside_an_edge():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 2:5, 2:5] = 1.0  # a 3x3 square
    w = train.edge_weights(x, 10.0)
    assert w.shape == (1, 1, 8, 8) and set(w.unique().tolist()) == {1.0, 11.0}
    assert w[0, 0, 3, 3] == 11 and w[0, 0, 0, 0] == 1 and w[0, 0, 7, 7] == 1  # inside near edge; far corners
    assert torch.equal(train.edge_weights(x, 0.0), torch.ones(1, 1, 8, 8))


def test_export_of_the_last_checkpoint_is_the_model_the_training_saved(runs, tmp_path, monkeypatch):
    """export.py --ema of the finished run's checkpoint writes the model finish() wrote, and our
    runtime loads and runs it."""
    from safetensors.torch import load_file

    from ollimg.runtime import load
    from training.shapes import export

    for table, small in TINY:
        for key, value in small.items():
            monkeypatch.setitem(table, key, value)
    with pytest.raises(SystemExit, match="needs the full.pt"):
        export.export(runs / "carried", tmp_path / "none", ema=True)
    export.export(runs / "one" / "ckpt", tmp_path / "model", ema=True)
    for part in ("transformer", "text_encoder", "vae"):
        ours, theirs = (sorted((d / part).glob("*.safetensors")) for d in (tmp_path / "model", runs / "one" / "model"))
        assert [p.name for p in ours] == [p.name for p in theirs]
        for a, b in zip(ours, theirs):
            assert_same(load_file(a), load_file(b), part)
    image = load(tmp_path / "model", backend="torch", device="cpu").generate("a red circle", width=64, height=64,
                                                                             steps=2, seed=0).images[0]
    assert image.size == (64, 64)


def test_latent_figures_see_a_latent_spike():
    torch.manual_seed(0)
    mode, std = torch.randn(2, 16, 8, 8) * 0.5, torch.full((2, 16, 8, 8), 0.1)
    calm = train.latent_figures(mode, std)
    mode[:, :, 3, 4] *= 20  # one extreme position per image: where such a VAE draws a speck
    spiked = train.latent_figures(mode, std)
    assert calm["posterior_std"] == 0.1 and calm["peak_over_median"] < 3 < 10 < spiked["peak_over_median"]


def test_interior_is_three_pixels_away_from_every_edge():
    x = torch.zeros(1, 3, 16, 16)
    x[..., 2:12, 2:12] = 1.0  # a 10x10 square; edge_weights marks rows and columns 1 and 11
    inside = train.interior(x)[0, 0]
    assert inside[7, 7] == 1 and inside[14, 14] == 1  # 4 and 3 from the nearest edge
    assert inside[13, 13] == 0 and inside[3, 3] == 0 and inside[0, 0] == 0  # 2, 2, 1 from one
    assert inside[2:12, 2:12].sum() == 25 and inside[4:9, 4:9].all()  # the square's 5x5 middle


def test_refining_the_decoder_leaves_the_encoder_and_the_rng_alone(tmp_path, monkeypatch):
    for table, small in TINY:
        for key, value in small.items():
            monkeypatch.setitem(table, key, value)
    torch.manual_seed(0)
    vae = model.build_vae([8, 16], 1).eval().requires_grad_(False)  # as prepare_vae leaves it
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    args, _ = train.parse_args(["--out", str(tmp_path), "--decoder-steps", "2", "--vae-batch", "2"])
    rng = torch.get_rng_state()
    train.refine_decoder(vae, args, "cpu")
    assert torch.equal(torch.get_rng_state(), rng)
    after = vae.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in vae.parameters())
    assert all(torch.equal(p, p.to(torch.bfloat16).float()) for p in vae.decoder.parameters())  # as it ships


def test_a_refined_decoder_ships_only_when_it_draws_fewer_artefacts_and_keeps_kind_and_count():
    def figures(kind, count, stray, blemish=30.0):
        return {"all": {"kind": kind, "count": count}, "images_with_stray_pixels": stray,
                "blemish_pixels_per_image": blemish}

    before = figures(1.0, 1.0, 100)
    assert train.refinement_helps(before, figures(1.0, 1.0, 60))
    assert train.refinement_helps(before, figures(1.0, 1.0, 100, 7.0))  # fewer blemishes alone
    assert not train.refinement_helps(before, figures(1.0, 1.0, 100))  # no fewer artefacts
    assert not train.refinement_helps(before, figures(1.0, 1.0, 60, 31.0))  # fewer specks, more blemishes
    assert not train.refinement_helps(before, figures(0.99, 1.0, 10))  # a kind lost
    assert not train.refinement_helps(before, figures(1.0, 0.99, 10))  # a count lost


@pytest.mark.parametrize("helps", [True, False])
def test_refine_changes_a_finished_models_decoder_only_when_it_helps(runs, tmp_path, monkeypatch, helps):
    """refine.py on a finished model: with fewer specks (the stubbed check) the VAE on disk gets a
    new decoder and the same encoder; without, it stays byte for byte as it was."""
    from safetensors.torch import load_file

    from training.shapes import refine

    shutil.copytree(runs / "one" / "model", tmp_path / "model")
    vae_file = tmp_path / "model" / "vae" / "diffusion_pytorch_model.safetensors"
    before_bytes = vae_file.read_bytes()
    before = load_file(vae_file)
    checks = iter([{"all": {"kind": 1.0, "count": 1.0}, "images_with_stray_pixels": 9, "blemish_pixels_per_image": 5},
                   {"all": {"kind": 1.0, "count": 1.0}, "images_with_stray_pixels": 3 if helps else 9,
                    "blemish_pixels_per_image": 5}])
    monkeypatch.setattr(train, "check_vae", lambda vae, device: next(checks))
    refine.main([str(tmp_path / "model"), "--edge-weight", "10", "--vae-batch", "2", "--decoder-steps", "2",
                 "--worst-weight", "0.3", "--eval-steps"])
    info = json.loads((tmp_path / "refine-info.json").read_text())
    assert info["decoder_refined"] is helps and info["vae_heldout_refined"]["images_with_stray_pixels"] == (3 if helps else 9)
    if not helps:
        assert vae_file.read_bytes() == before_bytes
        return
    after = load_file(vae_file)
    assert after.keys() == before.keys() and all(v.dtype == torch.bfloat16 for v in after.values())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
