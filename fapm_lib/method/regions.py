"""Split feature maps into a grid of regions ("patches") and merge per-position values back."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError


def split_regions(features: Tensor, grid: int) -> Tensor:
    """``[B, C, H, W] -> [R, B*s*s, C]`` with ``R = grid**2`` and ``s = H / grid``.

    Region ``r = gy * grid + gx``; within a region, rows are ordered (image, y, x): in einops
    notation ``b c (gy sy) (gx sx) -> (gy gx) (b sy sx) c``. Written with ``reshape`` and
    ``permute`` and ``-1`` for the batch, so a traced (exported) model keeps a dynamic batch.
    """
    channels, height, width = features.shape[1:]
    side = height // grid if torch.jit.is_tracing() else check_grid(height, width, grid)  # traced sizes are tensors
    regions = features.reshape(-1, channels, grid, side, grid, width // grid)  # b c gy sy gx sx
    # contiguous: the same values in another memory layout would round differently in bmm (the
    # reshape alone returns a view when a region is one cell)
    return regions.permute(2, 4, 0, 3, 5, 1).reshape(grid * grid, -1, channels).contiguous()


def merge_regions(values: Tensor, grid: int, height: int, width: int) -> Tensor:
    """``[R, B*s*s, ...] -> [B, H, W, ...]``: the inverse of :func:`split_regions`
    (``(gy gx) (b sy sx) ... -> b (gy sy) (gx sx) ...``)."""
    sy, sx = height // grid, width // grid
    tail = tuple(values.shape[2:])
    cells = values.reshape(grid, grid, -1, sy, sx, *tail)  # gy gx b sy sx ...
    order = (2, 0, 3, 1, 4, *range(5, cells.ndim))  # b gy sy gx sx ...
    return cells.permute(order).reshape(-1, height, width, *tail)


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


def image_rows(images: Tensor, per_image: int) -> Tensor:
    """Rows of ``images [K]`` among one region's vectors ``[N * per_image, C]`` (image-major, as
    :func:`split_regions` orders them) -> ``[K * per_image]``."""
    return (images[:, None] * per_image + torch.arange(per_image, device=images.device)).flatten()


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
