"""k-fold held-out scores of the normal training images, and the thresholds they give.

Image ``i`` is in fold ``i % folds`` (:mod:`fapm_lib.method.machinery.folds`). For each fold, memories are
built from the other folds' region features (row subsets of the features already extracted: no
second backbone pass), and the fold's scored images (every one, or a seeded sample of at most
``calibration_images``) by the same :class:`~fapm_lib.method.fapm_model.FAPMModel` that predicts,
each query in its own region and layer. See :mod:`fapm_lib.decisions.calibration`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import FAPMConfig
from ..method.fapm_model import FAPMModel
from ..method.geometry import ModelGeometry
from ..method.machinery.folds import fold_count, heldout_images, kept_images, scored_images
from ..method.memory_builders import build_layer_memory, build_layer_memory_cells, check_fold_k
from ..method.regions import cells_per_region, image_rows, merge_regions
from ..method.scoring import top_neighbours, valid_knn
from .calibration import (
    K_KEPT,
    PIXEL_TABLE_RATES,
    QUANTILE_RULE,
    Calibration,
    describe,
    floor_spread,
    image_scores,
    quantile_threshold,
    spread,
)
from .quantiles import ValueFile


def regions_to_maps(regions: Tensor, images: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """The feature maps of some images back from one layer's region features:
    ``[R, N*s*s, C]`` -> ``[len(images), C, h, w]``."""
    h, w = size
    rows = image_rows(images, cells_per_region(size, grid)).to(regions.device)
    return merge_regions(regions.index_select(1, rows), grid, h, w).permute(0, 3, 1, 2)


def fold_model(regions: list[Tensor], geometry: ModelGeometry, config: FAPMConfig, train: Tensor,
               progress: bool = False, method: str = "exact") -> FAPMModel:
    """A model (no backbone) whose memories are built from the ``train`` images' rows only, by
    the coreset ``method`` of the fit (``exact`` or ``cells``)."""
    memories = []
    for layer, features in enumerate(regions):
        per_image = geometry.per_image(layer)
        if method == "cells":
            memories.append(build_layer_memory_cells(features, per_image, config, train, f"calibration layer {layer}"))
            continue
        rows = image_rows(train, per_image).to(features.device)
        memories.append(build_layer_memory(features.index_select(1, rows), config.coreset_ratio,
                                           config.adaptive_multiplier, config.sampling, config.coreset_projection,
                                           config.seed, progress, name=f"calibration layer {layer}"))
    return FAPMModel.from_config(config, None, memories, geometry)


@dataclass
class HeldOut:
    """Held-out normal predictions: ``neighbours [N, k']`` (see
    :func:`~fapm_lib.method.scoring.top_neighbours`) and anomaly ``maps [N, S, S]`` (or their
    pixels in a :class:`~fapm_lib.decisions.quantiles.ValueFile`, for a bounded fit; ``S x S``: the
    model's canvas), image ``i``
    scored by the memory of the folds without it."""

    neighbours: Tensor
    maps: Tensor | ValueFile
    folds: int


@torch.inference_mode()
def heldout_predictions(regions: list[Tensor], geometry: ModelGeometry, config: FAPMConfig,
                        progress: bool = False, method: str = "exact") -> HeldOut:
    """k-fold held-out predictions of the scored training images (:func:`scored_images`, in
    image order) from per-layer region features ``[R, N*s*s, C]`` (``config.calibration_folds``
    folds). Up to :data:`K_KEPT` neighbours are kept, so that ``k`` and the image score can
    change after fitting. ``method``: the fit's coreset method (:func:`fold_model`)."""
    n_images = regions[0].shape[1] // geometry.per_image(0)
    folds = fold_count(n_images, config.calibration_folds)
    scored = scored_images(n_images, config.calibration_images, config.seed)
    neighbours: list[Tensor] = []
    maps = torch.empty(len(scored), *geometry.canvas)
    k = K_KEPT
    for f, (images, slots) in enumerate(heldout_images(scored, folds)):
        model = fold_model(regions, geometry, config, kept_images(n_images, folds, f), progress, method)
        k = min(k, *(int(m.bank_sizes().min()) for m in model.memories))
        if not len(images):
            continue
        queries = [regions_to_maps(r, images, geometry.grid, size) for r, size in zip(regions, geometry.feature_sizes)]
        knn = model.search(queries, k)
        neighbours.append((slots, top_neighbours(valid_knn(knn, geometry.canvas, geometry.padded)).cpu()))
        maps[slots] = model.postprocess(knn).anomaly_map.cpu()
    merged = torch.empty(len(scored), k)
    for slots, n in neighbours:
        merged[slots] = n[:, :k]
    return HeldOut(merged, maps, folds)


def from_heldout(heldout: HeldOut, image_score: str, k: int, false_alarm_rate: float) -> Calibration:
    """Thresholds at ``false_alarm_rate`` from held-out normal predictions (``k``: the
    neighbours the image score reads)."""
    scores = image_scores(heldout.neighbours, image_score, k).numpy()
    rates = [1.0 - r for r in PIXEL_TABLE_RATES]
    if isinstance(heldout.maps, ValueFile):  # a bounded fit's pixels: the same figures, from the file
        pixels = heldout.maps
        table, pixel_summary = pixels.quantiles(rates, np.float32), pixels.describe()
        threshold = float(pixels.quantiles([1.0 - false_alarm_rate])[0])
        pixel_scale = floor_spread(pixel_summary["std"], pixel_summary["mean"])
    else:
        values = heldout.maps.numpy().ravel()
        table, pixel_summary = np.quantile(values, rates), describe(values)
        threshold, pixel_scale = quantile_threshold(values, false_alarm_rate), spread(values)
    summary = {
        "folds": heldout.folds, "n_images": int(heldout.neighbours.shape[0]), "rule": QUANTILE_RULE,
        "image": describe(scores, keep_values=True),
        "pixel": {**pixel_summary, "table": {"false_alarm_rate": list(PIXEL_TABLE_RATES),
                                             "threshold": [float(v) for v in table]}},
        "neighbours": heldout.neighbours.tolist(),
    }
    return Calibration(quantile_threshold(scores, false_alarm_rate), spread(scores), threshold, pixel_scale,
                       "false_alarm_rate", false_alarm_rate, summary, image_score, k)


def calibrate_regions(regions: list[Tensor], geometry: ModelGeometry, config: FAPMConfig,
                      progress: bool = False, method: str = "exact") -> Calibration | None:
    """k-fold calibration of a fit from its per-layer region features ``[R, N*s*s, C]``; None
    when ``config.calibration_folds`` is 0 or there are fewer than 2 images. ``method``: the
    fit's coreset method, ``exact`` or ``cells`` (the folds' memories are built the same way)."""
    n_images = regions[0].shape[1] // geometry.per_image(0)
    if config.calibration_folds == 0 or n_images < 2:
        return None
    held = heldout_predictions(regions, geometry, config, progress, method)
    check_fold_k(config.search_k, held.neighbours.shape[1])
    return from_heldout(held, config.image_score, config.search_k, config.false_alarm_rate)
