"""The region grid a fit uses, from its settings and its feature maps: the paper's square
``grid`` on the protocol's input, or regions of ``region_pixels`` at native resolution."""
from __future__ import annotations

from ..config import FAPMConfig
from ..errors import ConfigError
from .backbone import FEATURE_STRIDES
from .regions import check_grid, valid_grids


def region_grid(config: FAPMConfig, feature_sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """``(rows, cols)`` over maps of ``feature_sizes`` (per layer ``(h, w)``, stride 8 first)."""
    if not config.native:
        return config.grid_side, config.grid_side
    if not feature_sizes:
        raise ConfigError("the region grid is not known before the first feature maps")
    cells = config.region_pixels // FEATURE_STRIDES[0]
    h, w = feature_sizes[0]
    return h // cells, w // cells


def check_region_grid(config: FAPMConfig, feature_sizes: list[tuple[int, int]],
                      strides: tuple[int, ...] = FEATURE_STRIDES) -> None:
    """ConfigError (one line) unless the region grid divides every feature map: the protocol's
    ``grid`` (with the grids that would fit), or native regions on whole cells."""
    grid = region_grid(config, feature_sizes)
    options = valid_grids(*(side for size in feature_sizes for side in size))  # square grids that fit every layer
    for i, (h, w) in enumerate(feature_sizes):
        what = f"layer-{i} feature map (stride {strides[i]})"
        check_grid(h, w, grid if config.native else config.grid_side, what, options)

