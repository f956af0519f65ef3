"""The training's batched DiT forward computes exactly what diffusers' forward computes."""

import torch

from training.shapes import fast_dit, model


def test_fast_forward_matches_diffusers():
    torch.manual_seed(0)
    dit = model.build_transformer().eval()
    with torch.no_grad():
        for p in dit.parameters():  # random norms, biases and pad tokens: a skipped tensor shows
            p.add_(torch.randn_like(p) * 0.05)
    lens = [7, 32, 45, 20]
    d = model.TRANSFORMER["cap_feat_dim"]
    caps = torch.randn(len(lens), max(lens) + 3, d)
    latents = torch.randn(len(lens), 16, 16, 16)
    t = torch.rand(len(lens))
    with torch.no_grad():
        ref = dit(list(latents.unsqueeze(2)), t, [caps[i, :n] for i, n in enumerate(lens)], return_dict=False)[0]
        ref = torch.stack(ref).squeeze(2)
        out = fast_dit.forward(dit, latents, t, caps, lens)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
