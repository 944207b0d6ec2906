"""Backbone features with local neighbourhood aggregation, shared by FAPM and PatchCore."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .backbone import FeatureExtractor


def embed(extractor: FeatureExtractor, images: Tensor, pool_size: int = 3) -> list[Tensor]:
    """``[B, 3, S, S] -> [[B, C8, S/8, S/8], [B, C16, S/16, S/16]]``, aggregated, float32."""
    images = images.to(next(extractor.parameters()).device, non_blocking=True)
    return aggregate_maps(extractor(images), pool_size)


def aggregate_maps(features: list[Tensor], pool_size: int = 3) -> list[Tensor]:
    """Raw backbone maps -> aggregated float32 maps (what :func:`embed` returns)."""
    return [aggregate(f.float(), pool_size) for f in features]


def aggregate(feature: Tensor, pool_size: int = 3) -> Tensor:
    """3x3 (``pool_size``) average pooling, stride 1, same size: ``[B, C, H, W] -> [B, C, H, W]``.

    On a CPU the pooling runs in channels-last layout: the same values, 3 to 7x faster at batch 1."""
    if pool_size == 1:
        return feature
    if feature.device.type == "cpu":
        feature = feature.contiguous(memory_format=torch.channels_last)
    return F.avg_pool2d(feature, pool_size, stride=1, padding=pool_size // 2).contiguous()
