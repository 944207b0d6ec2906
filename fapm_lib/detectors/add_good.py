"""Adding normal images to a fitted FAPM model without refitting it (``FAPM.add_good``,
``fapm update``): the false alarms an operator marks become part of the normal memory.

1. The added images' features are extracted once (the backbone only sees the new images).
2. Each region's bank, per layer, grows by a greedy k-center run that starts from all of its old
   vectors and picks among the new ones (:func:`~fapm_lib.method.memory_update.extend_layer_memory`):
   ``ceil(r N)`` new centres per region (``ceil(a r N)`` in a far region), N the new rows. The
   near / far classes and the covering radii stay as fitted.
3. Held-out scores of the added images, as the fit's k-fold gives the old ones: image ``j`` is
   scored by the old memory extended with the *other* added images (interleaved folds, image
   ``j`` in fold ``j % calibration_folds``; leave-one-out for up to ``calibration_folds``
   images; one image alone: the old memory). Scoring them by the old memory only would put the
   marked false alarms, by construction above the threshold, into the held-out set, and lift the
   threshold to their level (with 10 images on the tests' data, a real defect then passed OK).
4. The thresholds are refreshed from the old and new held-out scores
   (:mod:`fapm_lib.decisions.refresh`); the image paths and the sources of the new vectors
   continue the old numbering; ``fit_stats["updates"]`` records the update.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import FAPMConfig
from ..data.samples import sample_paths
from ..decisions.calibration import K_KEPT
from ..decisions.refresh import refresh
from ..errors import ConfigError
from ..method.fapm_model import FAPMModel
from ..method.geometry import ModelGeometry
from ..method.machinery.folds import fold_count, heldout_images, kept_images
from ..method.memory import LayerMemory
from ..method.memory_builders import check_k
from ..method.memory_update import extend_layer_memory
from ..method.regions import image_rows, split_regions
from ..method.scoring import top_neighbours, valid_knn


@dataclass
class UpdateReport:
    """What an update did: the added images (``paths``, None for tensors), their raw scores and
    decisions by the model before (``before``) and after (``after``) it, the thresholds
    before and after, the time (features + memory + held-out scores + calibration, no file
    I/O), and per layer the largest distance of a new vector to its region's bank before and
    after (``radius_before`` / ``radius_after``, the mean over regions)."""

    paths: list[str] | None
    before: list[tuple[float, str]]
    after: list[tuple[float, str]]
    threshold_before: float | None
    threshold_after: float | None
    seconds: float
    radius_before: list[float]
    radius_after: list[float]
    vectors_before: int
    vectors_after: int


def _decisions(model, scores: Tensor) -> list[tuple[float, str]]:
    cal = model.calibration
    return [(float(s), "uncalibrated" if cal is None else cal.decide(float(s))) for s in scores]


@torch.inference_mode()
def score_cached_maps(fapm: FAPMModel, maps: list[Tensor], batch: int, search_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Predictions from aggregated maps (per layer ``[N, C, h, w]``), batched: neighbours
    ``[N, k']`` (up to :data:`~fapm_lib.decisions.calibration.K_KEPT`), maps ``[N, H, W]``, scores ``[N]``."""
    k = min(K_KEPT, *(int(m.bank_sizes().min()) for m in fapm.memories))
    neighbours, amaps, scores = [], [], []
    for start in range(0, maps[0].shape[0], batch):
        knn = fapm.search([m[start : start + batch].to(fapm.device) for m in maps], max(k, search_k))
        pred = fapm.postprocess(knn[..., :search_k])
        neighbours.append(top_neighbours(valid_knn(knn, fapm.canvas, fapm.padded)).cpu())
        amaps.append(pred.anomaly_map.cpu())
        scores.append(pred.pred_score.cpu())
    return torch.cat(neighbours), torch.cat(amaps), torch.cat(scores)


def extend_memories(memories: list[LayerMemory], regions: list[Tensor], first_rows: list[int],
                    config: FAPMConfig) -> tuple[list[LayerMemory], list[Tensor], list[Tensor]]:
    """Every layer's memory extended with its new region features (per layer ``[R, N*s*s, C]``;
    their sources start at ``first_rows[layer]``); the new vectors' covering radii before and after."""
    out, before, after = [], [], []
    for memory, features, first in zip(memories, regions, first_rows):
        extended, r_before, r_after = extend_layer_memory(
            memory, features, first, config.coreset_ratio, config.adaptive_multiplier, config.sampling,
            config.coreset_projection, config.seed)
        out.append(extended)
        before.append(r_before)
        after.append(r_after)
    return out, before, after


def heldout_added(fapm: FAPMModel, regions: list[Tensor], maps: list[Tensor], cells: list[int],
                  config: FAPMConfig, geometry: ModelGeometry) -> tuple[Tensor, Tensor]:
    """Held-out predictions of the added images (step 3 of the module): neighbours ``[N, k']``
    and anomaly maps ``[N, H, W]``, image ``j`` scored without its own fold."""
    n = maps[0].shape[0]
    folds = fold_count(n, max(config.calibration_folds, 1))
    amaps, parts = torch.empty(n, *geometry.canvas), []
    for f, (held, _) in enumerate(heldout_images(torch.arange(n), folds)):
        others = kept_images(n, folds, f)
        model = fapm
        if len(others):
            rows = [image_rows(others, c).to(r.device) for r, c in zip(regions, cells)]
            memories = extend_memories(list(fapm.memories), [r.index_select(1, i) for r, i in zip(regions, rows)],
                                       [0] * len(regions), config)[0]
            model = FAPMModel.from_config(config, None, memories, geometry).to(fapm.device)
        near, amaps[held], _ = score_cached_maps(model, [m[held] for m in maps], config.batch_size, config.search_k)
        parts.append((held, near))
    neighbours = torch.empty(n, min(near.shape[1] for _, near in parts))
    for held, near in parts:
        neighbours[held] = near[:, : neighbours.shape[1]]
    return neighbours, amaps


def _old_image_count(model, per_image: int) -> int:
    """How many images the memory was built from (image ``i`` of the sources)."""
    if model.train_images is not None:
        return len(model.train_images)
    if model.fit_stats.get("n_train"):
        return int(model.fit_stats["n_train"])
    if model.calibration is not None and "n_images" in model.calibration.summary:  # files before n_train
        return int(model.calibration.summary["n_images"])
    rows = [int(g.sources.max()) for g in model.memories[0].groups if g.sources is not None and g.sources.numel()]
    return max(rows) // per_image + 1 if rows else 0


def add_good(model, data, progress: bool = False) -> UpdateReport:
    """Add the normal images ``data`` (a dataset, loader or ``[N, 3, S, S]`` tensor) to a fitted
    FAPM detector in place (see the module's steps); the report of what changed."""
    fapm = model._require_fitted()
    if not isinstance(fapm, FAPMModel):
        raise ConfigError(f"update adds images to FAPM memories; this is a {model.kind} model")
    paths = sample_paths(data)
    if model.train_images is not None and paths is None:
        raise ConfigError("the model records its training image paths: add images from files (a dataset of "
                          "samples), so that explanations can still find every source")
    config, start = model.config, time.perf_counter()
    size_before = int(fapm.memory_size()["vectors"])
    maps = model.extract(data, progress, desc="features (added images)")
    fapm.check_feature_sizes(maps)
    scores_before = score_cached_maps(fapm, maps, config.batch_size, config.search_k)[2]
    before, threshold_before = _decisions(model, scores_before), getattr(model.calibration, "image_threshold", None)
    geometry = fapm.geometry
    cells = [geometry.per_image(layer) for layer in range(len(maps))]  # rows per image and region
    regions = [split_regions(m.to(fapm.device), geometry.grid) for m in maps]
    n_old = _old_image_count(model, cells[0])
    memories, r_before, r_after = extend_memories(list(fapm.memories), regions, [n_old * c for c in cells], config)
    check_k(memories, config.search_k)
    if model.calibration is not None:
        neighbours, heldout_maps = heldout_added(fapm, regions, maps, cells, config, geometry)
        model.calibration = refresh(model.calibration, neighbours, heldout_maps)
    model.model = FAPMModel.from_config(config, fapm.backbone, memories, geometry,
                                        tile_rule=model.tile_rule).to(model.device)
    if model.train_images is not None and paths is not None:
        model.train_images = [*model.train_images, *paths]
    seconds = time.perf_counter() - start
    after = _decisions(model, score_cached_maps(model.model, maps, config.batch_size, config.search_k)[2])
    model.fit_stats["updates"] = [*model.fit_stats.get("updates", []), {"n_added": len(before),
                                                                        "seconds": round(seconds, 3)}]
    if model.fit_stats.get("n_train"):
        model.fit_stats["n_train"] = int(model.fit_stats["n_train"]) + len(before)
    return UpdateReport(paths, before, after, threshold_before, getattr(model.calibration, "image_threshold", None),
                        seconds, [float(r.mean()) for r in r_before], [float(r.mean()) for r in r_after],
                        size_before, int(model.model.memory_size()["vectors"]))

