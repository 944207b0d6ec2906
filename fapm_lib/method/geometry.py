"""Where an image's pixels go before the memory: the canvas padded to whole regions, the tiles
the backbone runs on, and the region grid (rows x columns) over the feature maps.

- **Padding.** At native resolution a region is ``region_pixels`` square (default 32: the paper's
  region, 4 x 4 stride-8 cells); the canvas (H, W) is padded at the bottom and right, by
  replicating its last row and column, to ``(Hp, Wp)``, whole multiples of it. The padding is
  cut off the anomaly map, and its cells never count in the image score. The paper's protocol
  pads nothing: its ``grid`` divides the square input's feature maps.
- **Tiles.** An input larger than ``tile`` on a side runs through the backbone as overlapping
  tiles (never all at once): along a side of L pixels, the fewest tiles of at most ``tile``
  pixels that overlap by at least ``o = tile_overlap``, ``n = ceil((L - o) / (tile - o))``, made
  as short as that allows (rule ``even``: ``ceil((L + (n - 1) o) / n)`` rounded up to 32 pixels),
  so that the tiles cover the side with little more than the overlaps (1024 pixels: three tiles
  of 384, not three of 512), at evenly spread offsets (multiples of 16, so the tiles' feature
  cells fall on the whole input's cells). Model files written before this rule keep tiles of
  the full ``tile`` (rule ``full``), so they score as they did. Where
  tiles overlap, their raw feature maps are blended with linear weights that fall to 0 at each
  tile's inner edges (:func:`blend_weights`), so no seam is left where one tile's padding effect
  would meet the next tile's content; then the 3x3 aggregation runs on the blended maps.
  An input no larger than ``tile`` runs whole: with the defaults (512) the backbone's cost per
  pixel stays that of its own training size (measured in ``docs/native.md``).
- **Regions.** ``rows x cols`` regions of ``s x s`` cells of each layer (``s = region / stride``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError

#: Tile offsets are multiples of this many pixels: the coarser stride, so tiles share the cell grid.
TILE_ALIGN = 16
#: Shortened tiles are whole multiples of this many pixels.
TILE_LENGTH_STEP = 32
#: How tile lengths are chosen: "even" (as short as the count of tiles allows) or "full" (``tile``
#: pixels, the rule of model files written before "even").
TILE_RULES = ("even", "full")


@dataclass(frozen=True)
class TileLayout:
    """Tiles of ``size`` (height, width) at the offsets ``ys`` x ``xs`` of a padded input ``padded``."""

    padded: tuple[int, int]
    size: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def single(self) -> bool:
        """True when one tile covers the input (the backbone runs on it whole)."""
        return len(self.ys) == 1 and len(self.xs) == 1

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


@dataclass(frozen=True)
class ModelGeometry:
    """A fitted model's geometry: the ``canvas`` (height, width) it scores, its ``padded`` size,
    the region ``grid`` (rows, cols) and the aggregated maps' ``feature_sizes`` (per layer
    ``(h, w)``)."""

    canvas: tuple[int, int]
    padded: tuple[int, int]
    grid: tuple[int, int]
    feature_sizes: tuple[tuple[int, int], ...]

    @property
    def n_regions(self) -> int:
        return self.grid[0] * self.grid[1]

    def per_image(self, layer: int) -> int:
        """Vectors one image gives one region of ``layer``."""
        h, w = self.feature_sizes[layer]
        return (h // self.grid[0]) * (w // self.grid[1])


def tile_layout(padded: tuple[int, int], tile: int, overlap: int, rule: str = "even") -> TileLayout:
    """The tiles covering an input of ``padded`` (height, width) pixels (see the module)."""
    if rule not in TILE_RULES:
        raise ConfigError(f"tile rule {rule!r}: expected one of {', '.join(TILE_RULES)}")
    (ys, height), (xs, width) = (_axis_tiles(side, tile, overlap, rule) for side in padded)
    return TileLayout((int(padded[0]), int(padded[1])), (height, width), ys, xs)


def blend_weights(starts: tuple[int, ...], length: int, side: int, stride: int) -> Tensor:
    """Per-tile weights along one axis at feature resolution ``stride``: ``[n_tiles, length /
    stride]`` for tiles of ``length`` pixels at ``starts`` on a side of ``side`` pixels. A cell's
    weight in a tile grows linearly with its distance to the tile's inner edges (the edges that
    another tile continues), and the weights of every cell sum to 1 over the tiles."""
    cells = torch.arange(length // stride, dtype=torch.float64) * stride + stride / 2  # cell centres in a tile
    weights = []
    for i in range(len(starts)):
        near_edge = torch.full_like(cells, math.inf)
        if i > 0:
            near_edge = torch.minimum(near_edge, cells)
        if i < len(starts) - 1:
            near_edge = torch.minimum(near_edge, length - cells)
        weights.append(near_edge.clamp(max=float(length)))
    raw = torch.stack(weights)  # [n, length / stride]
    total = torch.zeros(side // stride, dtype=torch.float64)
    for start, w in zip(starts, raw):
        total[start // stride : start // stride + len(w)] += w
    return torch.stack([w / total[s // stride : s // stride + len(w)] for s, w in zip(starts, raw)]).float()


def padded_size(canvas: tuple[int, int], multiple: int) -> tuple[int, int]:
    """``canvas`` (height, width) rounded up to whole multiples of ``multiple`` pixels."""
    return tuple(-(-int(side) // multiple) * multiple for side in canvas)  # type: ignore[return-value]


def pad_images(images: Tensor, padded: tuple[int, int]) -> Tensor:
    """``[B, C, H, W] -> [B, C, Hp, Wp]``, the last row and column replicated (a no-op at the size)."""
    height, width = images.shape[-2:]
    if (int(height), int(width)) == tuple(padded):
        return images
    return torch.nn.functional.pad(images, (0, padded[1] - int(width), 0, padded[0] - int(height)), mode="replicate")


def valid_cells(canvas: tuple[int, int], stride: int) -> tuple[int, int]:
    """Cells of a stride-``stride`` map that hold canvas pixels (the rest is padding)."""
    return -(-int(canvas[0]) // stride), -(-int(canvas[1]) // stride)


def _axis_tiles(side: int, tile: int, overlap: int, rule: str) -> tuple[tuple[int, ...], int]:
    """Offsets and length of the tiles along one side (see the module)."""
    if side <= tile:
        return (0,), side
    n = math.ceil((side - overlap) / (tile - overlap))
    length = tile
    if rule == "even":
        shortest = math.ceil((side + (n - 1) * overlap) / n)
        length = min(tile, -(-shortest // TILE_LENGTH_STEP) * TILE_LENGTH_STEP)
    starts = _spread(side, length, n)
    while length < tile and any(b - a > length - overlap for a, b in zip(starts, starts[1:])):
        length = min(tile, length + TILE_LENGTH_STEP)  # the offsets' alignment ate into the overlap
        starts = _spread(side, length, n)
    if starts[-1] % TILE_ALIGN:
        raise ConfigError(f"an input side of {side} pixels cannot be tiled by {length}-pixel tiles on the "
                          f"{TILE_ALIGN}-pixel cell grid; use a side or tile that differ by a multiple of {TILE_ALIGN}")
    return tuple(starts), length


def _spread(side: int, length: int, n: int) -> list[int]:
    """``n`` offsets of ``length``-pixel tiles from 0 to ``side - length``, evenly spread and
    aligned down to :data:`TILE_ALIGN` (the last one ends at the side)."""
    starts = [(i * (side - length) // (n - 1)) // TILE_ALIGN * TILE_ALIGN for i in range(n)]
    starts[-1] = side - length
    return starts
