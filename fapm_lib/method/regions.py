"""Steps 2 and 4: split feature maps into a grid of regions ("patches"), ``rows x cols`` of them,
and merge per-position values back. A grid is given as ``(rows, cols)``, or as one number for a
square grid (the paper's 7 x 7 on its square input)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError


def split_regions(features: Tensor, grid: int | tuple[int, int]) -> Tensor:
    """``[B, C, H, W] -> [R, B*sy*sx, C]`` with ``R = rows * cols``, ``sy = H / rows``, ``sx = W / cols``.

    Region ``r = gy * cols + gx``; within a region, rows are ordered (image, y, x): in einops
    notation ``b c (gy sy) (gx sx) -> (gy gx) (b sy sx) c``. Written with ``reshape`` and
    ``permute`` and ``-1`` for the batch, so a traced (exported) model keeps a dynamic batch.
    """
    rows, cols = grid_shape(grid)
    channels, height, width = features.shape[1:]
    if not torch.jit.is_tracing():  # traced sizes are tensors
        check_grid(height, width, (rows, cols))
    regions = features.reshape(-1, channels, rows, height // rows, cols, width // cols)  # b c gy sy gx sx
    # contiguous: the same values in another memory layout would round differently in bmm (the
    # reshape alone returns a view when a region is one cell)
    return regions.permute(2, 4, 0, 3, 5, 1).reshape(rows * cols, -1, channels).contiguous()


def merge_regions(values: Tensor, grid: int | tuple[int, int], height: int, width: int) -> Tensor:
    """``[R, B*sy*sx, ...] -> [B, H, W, ...]``: the inverse of :func:`split_regions`
    (``(gy gx) (b sy sx) ... -> b (gy sy) (gx sx) ...``)."""
    rows, cols = grid_shape(grid)
    sy, sx = height // rows, width // cols
    tail = tuple(values.shape[2:])
    cells = values.reshape(rows, cols, -1, sy, sx, *tail)  # gy gx b sy sx ...
    order = (2, 0, 3, 1, 4, *range(5, cells.ndim))  # b gy sy gx sx ...
    return cells.permute(order).reshape(-1, height, width, *tail)


def grid_shape(grid: int | tuple[int, int]) -> tuple[int, int]:
    """``(rows, cols)`` of a grid given as one number (square) or a pair."""
    if isinstance(grid, int):
        return grid, grid
    rows, cols = grid
    return int(rows), int(cols)


def region_count(grid: int | tuple[int, int]) -> int:
    """Regions of a grid, ``rows * cols``."""
    rows, cols = grid_shape(grid)
    return rows * cols


def cells_per_region(feature_size: tuple[int, int], grid: int | tuple[int, int]) -> int:
    """Vectors one image gives one region of a ``(h, w)`` map: ``(h / rows) * (w / cols)``."""
    rows, cols = grid_shape(grid)
    return (int(feature_size[0]) // rows) * (int(feature_size[1]) // cols)


def check_grid(height: int, width: int, grid: int | tuple[int, int], what: str = "feature map",
               options: list[int] | None = None) -> tuple[int, int]:
    """A region's ``(sy, sx)`` cells; ConfigError when ``grid`` does not divide the map.

    ``options``: the square grids to suggest (default: those that divide this map)."""
    rows, cols = grid_shape(grid)
    if height % rows or width % cols:
        options = options or valid_grids(height, width)
        named = f"{rows}" if rows == cols and isinstance(grid, int) else f"{rows}x{cols}"
        raise ConfigError(
            f"grid={named} does not divide the {height}x{width} {what}; pick one that divides every feature map "
            f"(e.g. {', '.join(map(str, options))})"
        )
    return height // rows, width // cols


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

    def __init__(self, grid: int | tuple[int, int], n_images: int | None) -> None:
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
