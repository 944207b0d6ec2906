"""Where a bounded fit reads region features from: the disk store
(:class:`~fapm_lib.scale.store.LayerStore`) or a tensor in RAM (:class:`TensorRegions`), both
read a chunk of regions at a time (:class:`RegionSource`)."""
from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import Tensor

from ..method.regions import image_rows


class RegionSource(Protocol):
    """Region features readable a chunk of regions at a time (a disk store, or a tensor)."""

    n_regions: int
    dim: int

    def rows(self, images: Tensor | None = None) -> int:
        """Vectors per region for ``images`` (ascending image indices; None: all)."""

    def read(self, regions: Sequence[int] | Tensor, images: Tensor | None = None,
             out: Tensor | None = None) -> Tensor:
        """Regions ``regions`` (ascending ids) -> ``[len(regions), rows(images), C]`` on the CPU."""


class TensorRegions:
    """A :class:`RegionSource` over region features in RAM, ``[R, N * rows_per_image, C]``."""

    def __init__(self, features: Tensor, rows_per_image: int = 1) -> None:
        self.features, self.rows_per_image = features, rows_per_image
        self.n_regions, self.dim = int(features.shape[0]), int(features.shape[2])

    def rows(self, images: Tensor | None = None) -> int:
        return int(self.features.shape[1]) if images is None else int(images.numel()) * self.rows_per_image

    def read(self, regions: Sequence[int] | Tensor, images: Tensor | None = None,
             out: Tensor | None = None) -> Tensor:
        ids = torch.as_tensor(list(map(int, regions)), dtype=torch.long, device=self.features.device)
        chunk = self.features.index_select(0, ids)
        if images is not None:
            chunk = chunk.index_select(1, image_rows(images.long(), self.rows_per_image).to(chunk.device))
        return chunk
