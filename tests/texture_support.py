"""A smooth periodic texture at 112 px for the FAPM and PatchCore model tests (real offline backbone:
stride-8 maps 14x14, grid 7 -> 2x2 positions per region; stride-16 maps 7x7, 1 position per
region), anomalies pasted into it, and comparisons of fitted models and predictions."""
from __future__ import annotations

import torch
from torch import Tensor

from fapm_lib.config import FAPMConfig
from fapm_lib.detectors.fapm import FAPM

S = 112
CONFIG = FAPMConfig(resize=S, crop_size=S, grid=7, coreset_ratio=0.5)


def texture(n: int, seed: int) -> Tensor:
    """``[n, 3, S, S]``: one smooth periodic texture plus small per-image noise."""
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    base = torch.stack([torch.sin(xx / 5.0) + torch.cos(yy / 7.0), torch.sin((xx + yy) / 9.0),
                        torch.cos(xx / 11.0 - yy / 6.0)]) * 0.5
    return base[None] + 0.05 * torch.randn(n, 3, S, S, generator=torch.Generator().manual_seed(seed))


def paste(images: Tensor, top: int, left: int, size: int = 16) -> Tensor:
    """A copy of ``images`` with a high-contrast checkerboard pasted at (top, left)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = torch.where((yy // 4 + xx // 4) % 2 == 0, 1.5, -1.5)
    out = images.clone()
    out[:, :, top : top + size, left : left + size] = board * torch.tensor([1.0, -1.0, 1.0])[:, None, None]
    return out


def assert_same_memories(a: FAPM, b: FAPM) -> None:
    assert len(a.memories) == len(b.memories)
    for ma, mb in zip(a.memories, b.memories):
        assert torch.equal(ma.radii, mb.radii) and torch.equal(ma.far, mb.far)
        assert len(ma.groups) == len(mb.groups)
        for ga, gb in zip(ma.groups, mb.groups):
            assert torch.equal(ga.regions, gb.regions) and torch.equal(ga.bank, gb.bank)


def assert_same_prediction(a, b) -> None:
    for name in ("anomaly_map", "pred_score", "patch_scores"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
