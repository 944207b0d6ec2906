"""Adding normal images to a fitted FAPM model without refitting it (``FAPM.add_good``,
``fapm update``): the false alarms an operator marks become part of the normal memory.

1. The added images' features are extracted once (the backbone only sees the new images).
2. They are scored by the memory *before* the update, which never saw them: held-out
   predictions, kept for the calibration (:mod:`fapm_lib.decisions.refresh`).
3. Each region's bank, per layer, grows by a greedy k-center run that starts from all of its old
   vectors and picks among the new ones (:func:`~fapm_lib.method.memory.extend_layer_memory`):
   ``ceil(r N)`` new centres per region (``ceil(a r N)`` in a far region), N the new rows.
4. The thresholds are refreshed from the old and new held-out scores; the image paths and the
   sources of the new vectors continue the old numbering; ``fit_stats["updates"]`` records it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.samples import sample_paths
from ..decisions.calibration import K_KEPT
from ..decisions.refresh import refresh
from ..errors import ConfigError
from ..method.fapm import FAPMModel
from ..method.memory import check_k, extend_layer_memory
from ..method.regions import split_regions
from ..method.scoring import top_neighbours


@dataclass
class UpdateReport:
    """What an update did: the added images (``paths``, None for tensors), their raw scores and
    decisions by the model before (``before``) and after (``after``) it, the thresholds
    before and after, the time (features + scoring + memory + calibration, no file I/O), and
    per layer the largest distance of a new vector to its region's bank, before and after
    (``radius_before`` / ``radius_after``, the mean over regions)."""

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
def _heldout(fapm: FAPMModel, maps: list[Tensor], batch: int, search_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Predictions of the model before the update: neighbours ``[N, k']``, maps ``[N, S, S]``, scores ``[N]``."""
    k = min(K_KEPT, *(int(m.bank_sizes().min()) for m in fapm.memories))
    neighbours, amaps, scores = [], [], []
    for start in range(0, maps[0].shape[0], batch):
        knn = fapm.search([m[start : start + batch].to(fapm.device) for m in maps], max(k, search_k))
        pred = fapm.postprocess(knn[..., :search_k])
        neighbours.append(top_neighbours(knn).cpu())
        amaps.append(pred.anomaly_map.cpu())
        scores.append(pred.pred_score.cpu())
    return torch.cat(neighbours), torch.cat(amaps), torch.cat(scores)


def _old_image_count(model, per_image: int) -> int:
    """How many images the memory was built from (image ``i`` of the sources)."""
    if model.train_images is not None:
        return len(model.train_images)
    if model.calibration is not None and "n_images" in model.calibration.summary:
        return int(model.calibration.summary["n_images"])
    if model.fit_stats.get("n_train"):
        return int(model.fit_stats["n_train"])
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
    neighbours, heldout_maps, scores = _heldout(fapm, maps, config.batch_size, config.search_k)
    before = _decisions(model, scores)
    threshold_before = None if model.calibration is None else model.calibration.image_threshold
    grid, memories, radius_before, radius_after = config.grid, [], [], []
    cells = [(h // grid) * (w // grid) for h, w in model.feature_sizes]  # rows per image and region
    n_old = _old_image_count(model, cells[0])
    for memory, f, per_image in zip(fapm.memories, maps, cells):
        extended, r_before, r_after = extend_layer_memory(
            memory, split_regions(f.to(fapm.device), grid), n_old * per_image, config.coreset_ratio,
            config.adaptive_multiplier, config.sampling, config.coreset_projection, config.seed)
        memories.append(extended)
        radius_before.append(float(r_before.mean()))
        radius_after.append(float(r_after.mean()))
    check_k(memories, config.search_k)
    model.model = FAPMModel.from_config(config, fapm.backbone, memories, model.feature_sizes).to(model.device)
    if model.calibration is not None:
        model.calibration = refresh(model.calibration, neighbours, heldout_maps)
    if model.train_images is not None and paths is not None:
        model.train_images = [*model.train_images, *paths]
    seconds = time.perf_counter() - start
    after = _decisions(model, _heldout(model.model, maps, config.batch_size, config.search_k)[2])
    updates = list(model.fit_stats.get("updates", []))
    model.fit_stats["updates"] = [*updates, {"n_added": len(before), "seconds": round(seconds, 3)}]
    if model.fit_stats.get("n_train"):
        model.fit_stats["n_train"] = int(model.fit_stats["n_train"]) + len(before)
    return UpdateReport(paths, before, after, threshold_before,
                        None if model.calibration is None else model.calibration.image_threshold, seconds,
                        radius_before, radius_after, size_before, int(model.model.memory_size()["vectors"]))


def summary_rows(report: UpdateReport) -> list[dict[str, object]]:
    """One row per added image: its name, raw score and decision before and after."""
    names = report.paths or [f"image {i}" for i in range(len(report.before))]
    return [{"image": name, "raw before": round(b[0], 3), "before": b[1], "raw after": round(a[0], 3), "after": a[1]}
            for name, b, a in zip(names, report.before, report.after)]



