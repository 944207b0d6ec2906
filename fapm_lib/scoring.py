"""From per-layer nearest-neighbour distances to an anomaly map and an image score."""
from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor


def upsample_nearest(coarse: Tensor, factor: int) -> Tensor:
    """``[B, h, w, ...] -> [B, h*f, w*f, ...]``: coarse cell (i, j) covers fine cells
    (f*i .. f*i+f-1, f*j .. f*j+f-1), exactly the positions its receptive field is centred on.
    (The official code misplaces half of the fine positions at this step.)"""
    return coarse.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def fuse_layers(distances: list[Tensor]) -> Tensor:
    """Sum per-layer k-NN distances on the finest grid: list of ``[B, h_l, w_l, k] -> [B, H, W, k]``."""
    fine = distances[0]
    total = fine.clone()
    for coarse in distances[1:]:
        total += upsample_nearest(coarse, fine.shape[1] // coarse.shape[1])
    return total


def gaussian_kernel_size(sigma: float) -> int:
    """Odd kernel size covering +-4 sigma, as anomalib and PatchCore use."""
    return 2 * int(4.0 * sigma + 0.5) + 1


def anomaly_map(patch_scores: Tensor, size: int, sigma: float = 4.0) -> Tensor:
    """``[B, H, W] -> [B, size, size]``: bilinear upsampling, then a separable Gaussian blur."""
    up = F.interpolate(patch_scores.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
    if sigma > 0:
        ks = gaussian_kernel_size(sigma)
        up = kornia.filters.gaussian_blur2d(up, (ks, ks), (sigma, sigma), border_type="reflect", separable=True)
    return up.squeeze(1)


def image_score(knn: Tensor, mode: str = "max") -> Tensor:
    """Image scores ``[B]`` from fused k-NN distances ``[B, H, W, k]`` (ascending along k).

    ``max``: the largest 1-NN distance. ``reweighted`` (the official code, from a PatchCore
    port): at the position with the largest 1-NN distance ``s*``, with its k distances ``N_b``,
    ``w = 1 - max(exp N_b) / sum(exp N_b)`` and the score is ``w * s*``.
    """
    flat = knn.flatten(1, 2)  # [B, P, k]
    best = flat[..., 0].argmax(dim=1)  # [B]
    neighbours = flat[torch.arange(flat.shape[0], device=flat.device), best]  # [B, k]
    top = neighbours[:, 0]
    if mode == "max":
        return top
    if mode == "reweighted":
        weight = 1.0 - torch.softmax(neighbours, dim=-1).max(dim=-1).values
        return weight * top
    raise ValueError(f"unknown image score mode {mode!r}")
