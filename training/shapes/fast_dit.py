"""A batched forward pass of diffusers' ZImageTransformer2DModel, for training only.

diffusers' own forward takes a list of latents and a list of caption features and loops over
the batch in Python (padding, position ids, sequence assembly, unpatchify): dozens of small
kernel launches per item, which starves a GPU at batch 256. This computes the same function with
the same modules and weights for a batch of same-sized images, vectorised; tests/training
checks it against diffusers' forward.
"""

from __future__ import annotations

import torch

from training.shapes import data

SEQ_MULTI_OF = 32


def _round_up(n: int) -> int:
    return n + (-n) % SEQ_MULTI_OF


def forward(dit, latents: torch.Tensor, t: torch.Tensor, caps: torch.Tensor, cap_lens: list[int]) -> torch.Tensor:
    """latents (B, C, H, W); t (B,); caps (B, Lt, D) caption features, row i valid up to
    cap_lens[i]. Returns the model output (B, C, H, W), as diffusers' forward would."""
    b, c, h, w = latents.shape
    ht, wt = h // 2, w // 2
    n_img = ht * wt
    assert n_img % SEQ_MULTI_OF == 0, "image token count must not need padding here"
    device = latents.device
    adaln = dit.t_embedder(t * dit.t_scale).type_as(latents)

    # Image tokens: (f, h, w) row-major, features (pf, ph, pw, c) with c fastest.
    x = latents.view(b, c, 1, 1, ht, 2, wt, 2).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, n_img, 4 * c)
    x = dit.all_x_embedder["2-1"](x)

    # Caption tokens, each padded to a multiple of 32 with the learned pad token.
    lens = data.on(device, cap_lens)
    padded = [_round_up(n) for n in cap_lens]
    lp = data.on(device, padded)
    lmax = max(padded)
    if caps.shape[1] < lmax:
        caps = torch.nn.functional.pad(caps, (0, 0, 0, lmax - caps.shape[1]))
    caps = caps[:, :lmax]
    rows = torch.arange(lmax, device=device)
    cap = dit.cap_embedder(caps)
    cap = torch.where((rows[None, :] >= lens[:, None])[..., None], dit.cap_pad_token.to(cap.dtype), cap)

    # Positions: caption (1 + k, 0, 0); image (Lp_i + 1, h, w).
    zeros = torch.zeros(lmax, dtype=torch.int32, device=device)
    cap_ids = torch.stack([rows.int() + 1, zeros, zeros], -1)  # (lmax, 3), same for all items
    hh, ww = torch.meshgrid(torch.arange(ht, device=device), torch.arange(wt, device=device), indexing="ij")
    img_ids = torch.stack([
        (lp[:, None] + 1).expand(b, n_img), hh.flatten()[None].expand(b, n_img), ww.flatten()[None].expand(b, n_img)
    ], -1).int()  # (B, n_img, 3)
    x_freqs = dit.rope_embedder(img_ids.reshape(-1, 3)).view(b, n_img, -1)
    cap_freqs = dit.rope_embedder(cap_ids)[None].expand(b, lmax, -1)

    same = all(p == lmax for p in padded)
    cap_mask = None if same else rows[None, :] < lp[:, None]

    for layer in dit.noise_refiner:
        x = layer(x, None, x_freqs, adaln)
    for layer in dit.context_refiner:
        cap = layer(cap, cap_mask, cap_freqs)

    unified = torch.cat([x, cap], 1)
    freqs = torch.cat([x_freqs, cap_freqs], 1)
    mask = None if same else torch.cat([torch.ones(b, n_img, dtype=torch.bool, device=device), cap_mask], 1)
    for layer in dit.layers:
        unified = layer(unified, mask, freqs, adaln)
    out = dit.all_final_layer["2-1"](unified, c=adaln)[:, :n_img]
    return out.view(b, 1, ht, wt, 1, 2, 2, c).permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c, h, w)
