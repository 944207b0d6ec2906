"""Split feature maps into a grid of regions ("patches") and merge per-position values back."""
from __future__ import annotations

import functools

import torch
from einops import rearrange
from torch import Tensor

from .errors import ConfigError


def check_grid(height: int, width: int, grid: int, what: str = "feature map",
               options: list[int] | None = None) -> int:
    """Side ``s`` of one region; ConfigError when ``grid`` does not divide the map.

    ``options``: the grids to suggest (default: those that divide this map)."""
    if height % grid or width % grid:
        options = options or valid_grids(height, width)
        raise ConfigError(
            f"grid={grid} does not divide the {height}x{width} {what}; pick one that divides every feature map "
            f"(e.g. {', '.join(map(str, options))})"
        )
    return height // grid


def valid_grids(*sizes: int) -> list[int]:
    """Region grids that divide every given feature-map side."""
    return [g for g in range(1, min(sizes) + 1) if all(s % g == 0 for s in sizes)]


def split_regions(features: Tensor, grid: int) -> Tensor:
    """``[B, C, H, W] -> [R, B*s*s, C]`` with ``R = grid**2`` and ``s = H / grid``.

    Region ``r = gy * grid + gx``; within a region, rows are ordered (image, y, x).
    """
    check_grid(features.shape[-2], features.shape[-1], grid)
    # contiguous: the same values in another memory layout would round differently in bmm
    return rearrange(features, "b c (gy sy) (gx sx) -> (gy gx) (b sy sx) c", gy=grid, gx=grid).contiguous()


def merge_regions(values: Tensor, grid: int, height: int, width: int) -> Tensor:
    """``[R, B*s*s, ...] -> [B, H, W, ...]``: the inverse of :func:`split_regions`."""
    sy, sx = height // grid, width // grid
    return rearrange(values, "(gy gx) (b sy sx) ... -> b (gy sy) (gx sx) ...", gy=grid, gx=grid, sy=sy, sx=sx)


# ---- fast path: the same split and merge as index tables (used by FAPM.knn) ------------------
@functools.lru_cache(maxsize=64)
def region_rows(grid: int, height: int, width: int, batch: int, order: tuple[int, ...],
                device: torch.device) -> Tensor:
    """Fast path of :func:`split_regions`: ``[R*B*s*s]`` row numbers into a map flattened to
    ``[B*H*W, C]`` (channels last) that give :func:`split_regions`' rows, with the regions taken
    in ``order`` (a permutation of ``0..R-1``): ``flat.index_select(0, rows).view(R, B*s*s, C)``
    in one gather (cached per shape)."""
    positions = torch.arange(batch * height * width).view(batch, height, width)
    rows = rearrange(positions, "b (gy sy) (gx sx) -> (gy gx) (b sy sx)", gy=grid, gx=grid)
    return rows[torch.tensor(order)].flatten().to(device)


@functools.lru_cache(maxsize=64)
def region_lookup(grid: int, height: int, width: int, batch: int, order: tuple[int, ...], factor: int,
                  device: torch.device) -> Tensor:
    """Fast path of :func:`merge_regions` followed by :func:`fapm_lib.scoring.upsample_nearest`:
    ``[B*(H*f)*(W*f)]``, for each position of the ``f`` times finer grid, the row of the
    region-ordered values (:func:`region_rows`) that covers it (2x2 tiling for ``f = 2``):
    ``values.index_select(0, lookup)`` merges the regions back and upsamples them in one gather."""
    rows = region_rows(grid, height, width, batch, order, torch.device("cpu"))
    inverse = torch.empty_like(rows)
    inverse[rows] = torch.arange(len(rows))  # map position -> row
    fine = inverse.view(batch, height, 1, width, 1).expand(-1, -1, factor, -1, factor)
    return fine.reshape(-1).to(device)


class RegionFeatureBuffer:
    """Accumulates one layer's region-split features ``[R, N*s*s, C]`` batch by batch, without
    keeping images or a second copy (preallocated when the image count is known)."""

    def __init__(self, grid: int, n_images: int | None) -> None:
        self.grid, self.n_images = grid, n_images
        self.buffer: Tensor | None = None
        self.chunks: list[Tensor] = []
        self.filled = 0

    def add(self, feature: Tensor) -> None:
        """Append ``[B, C, h, w]``."""
        regions = split_regions(feature, self.grid)  # [R, B*s*s, C]
        if self.n_images is None:
            self.chunks.append(regions)
            return
        if self.buffer is None:
            per_image = regions.shape[1] // feature.shape[0]
            self.buffer = regions.new_empty(regions.shape[0], self.n_images * per_image, regions.shape[2])
        self.buffer[:, self.filled : self.filled + regions.shape[1]] = regions
        self.filled += regions.shape[1]

    def result(self) -> Tensor:
        if self.n_images is None:
            self.chunks = [torch.cat(self.chunks, dim=1)]  # keep one copy, not the pieces as well
            return self.chunks[0]
        assert self.buffer is not None
        return self.buffer[:, : self.filled]
