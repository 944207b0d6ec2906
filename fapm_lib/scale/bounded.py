"""Fitting within a memory budget (``fit --max-memory``): the training features go to a disk
store (:mod:`fapm_lib.scale.store`), then :mod:`fapm_lib.scale.pipeline` builds each layer's
memory (and the k-fold calibration's held-out distances) a chunk of regions at a time, as many
regions as the budget allows: the same memories as the in-RAM fit (greedy runs of different
regions never interact)."""
from __future__ import annotations

from typing import Callable, Iterable

from torch import Tensor

from ..config import FAPMConfig
from ..errors import DataError
from ..method.coreset import near_far_sizes
from ..method.machinery.cells import resolve_method
from ..system.budget import current_rss, parse_size, regions_per_chunk
from .store import FeatureStore, LayerStore, LayerStoreWriter


def check_budget(config: FAPMConfig, n_images: int, layers: list[tuple[int, int]], n_regions: int) -> None:
    """Before extraction, refuse (ConfigError with the minimum) a ``config.max_memory`` that cannot
    hold beside this process the smallest memory this fit can have (every region "near") and one
    region's vectors of the largest layer. ``layers``: per layer (vectors per image and region, dim);
    ``n_regions``: regions per layer.
    A budget that passes may still be refused after the coreset, when the far regions' banks do
    not fit."""
    method = resolve_method(config, n_images, layers, n_regions)
    near = sum(4 * n_regions * dim * near_far_sizes(n_images * per_image, config.coreset_ratio,
                                                    config.adaptive_multiplier, config.sampling)[0]
               for per_image, dim in layers)
    one_region = max(4 * n_images * per_image * dim for per_image, dim in layers)
    regions_per_chunk(parse_size(config.max_memory), {"process now": current_rss(), "memory banks (all near)": near},
                      one_region, n_regions, str(config.max_memory), f"this fit ({method} coreset)")


def write_store(store: FeatureStore, batches: Iterable[list[Tensor]], n_images: int | None,
                on_first: Callable[[list[Tensor]], tuple[int, int]]) -> list[LayerStore]:
    """Aggregated maps arriving batch by batch (per layer ``[B, C, h, w]``) -> one
    :class:`LayerStore` per layer. ``on_first(maps)``: called with the first batch before
    anything is written (to check sizes and refuse a budget that is too small early); returns
    the region grid (rows, cols) the store is laid out by."""
    writers: list[LayerStoreWriter] = []
    try:
        for maps in batches:
            if not writers:
                grid = on_first(maps)
                writers = [store.writer(i, grid, n_images) for i in range(len(maps))]
            for writer, f in zip(writers, maps):
                writer.add(f)
        if not writers:
            raise DataError("no training images to fit on")
        return [writer.finish() for writer in writers]
    finally:
        for writer in writers:
            writer.close()
