"""Run a fitted model over a test split: maps, scores, metrics, timings, decision rates."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data.mvtec import MVTecDataset, make_loader
from ..system.timing import STAGES, predict_by_stage
from .calibration import Calibration
from .detector_protocol import ScoringDetector
from .metrics import compute_metrics


@dataclass
class EvalResult:
    """Per-image outputs of a test run: ``scores [N]``, ``labels [N]``, ``maps [N, S, S]``,
    ``masks [N, S, S]`` (None without ground truth), plus metrics and timings."""

    scores: Tensor
    labels: Tensor
    maps: Tensor
    masks: Tensor | None
    paths: list[str]
    defect_types: list[str]
    metrics: dict[str, float | None] = field(default_factory=dict)
    ms_per_image: float = 0.0
    #: wall ms per image of each stage, batched: ``backbone``, ``search``, ``post``
    stage_ms: dict[str, float] = field(default_factory=dict)


def run_test_set(model: ScoringDetector, dataset: MVTecDataset, progress: bool = True,
                 metrics: bool = True) -> EvalResult:
    """Predict every test image (batched) with a fitted detector (FAPM or PatchCore: its torch
    module ``model.runnable()`` runs stage by stage) and compute the four metrics (unless ``metrics``
    is False).

    ``ms_per_image`` is wall time of backbone + search + post-processing per image, batched,
    without data loading; ``stage_ms`` splits it by stage.
    """
    scores, labels, maps, masks, paths, types = [], [], [], [], [], []
    seconds = dict.fromkeys(STAGES, 0.0)
    loader = make_loader(dataset, batch_size=model.config.batch_size)
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        images = batch["image"].to(model.device)
        pred, timer = predict_by_stage(model.runnable(), images)
        for stage, wall in timer.wall.items():
            seconds[stage] += wall
        scores.append(pred.pred_score.cpu())
        maps.append(pred.anomaly_map.cpu())
        labels.append(batch["label"])
        masks.append(batch["mask"])
        paths += batch["path"]
        types += batch["defect_type"]
    result = EvalResult(torch.cat(scores), torch.cat(labels), torch.cat(maps),
                        torch.cat(masks) if dataset.has_masks else None, paths, types)
    if metrics:
        result.metrics = compute_metrics(result.scores, result.labels, result.maps, result.masks)
    n = max(1, len(paths))
    result.stage_ms = {stage: 1000.0 * s / n for stage, s in seconds.items()}
    result.ms_per_image = sum(result.stage_ms.values())
    return result


def pick_examples(result: EvalResult, n: int = 6) -> list[int]:
    """Indices worth showing: the highest-scored defects, the highest-scored good images
    (false-alarm candidates) and the lowest-scored defects (misses), without repeats."""
    order = torch.argsort(result.scores, descending=True).tolist()
    defects = [i for i in order if result.labels[i] == 1]
    goods = [i for i in order if result.labels[i] == 0]
    picks: list[int] = []
    for group in (defects[: n // 3 + n % 3], goods[: n // 3], defects[::-1][: n // 3]):
        picks += [i for i in group if i not in picks]
    return picks[:n]


def decision_metrics(result: EvalResult, calibration: Calibration | None) -> dict[str, float | str | None]:
    """The test set measured at the calibrated thresholds (it never sets them): ``threshold``
    (raw units), ``false_alarm_rate`` (fraction of good test images flagged NG), ``miss_rate``
    (fraction of defective ones passed OK); per pixel, ``pixel_false_alarm_rate`` over all
    pixels of the good test images and ``pixel_miss_rate`` over the defect pixels (masks)."""
    if calibration is None:
        return {"threshold": None, "threshold_method": "uncalibrated", "false_alarm_rate": None, "miss_rate": None}
    flagged, good = result.scores >= calibration.image_threshold, result.labels == 0
    out: dict[str, float | str | None] = {
        "threshold": calibration.image_threshold, "threshold_method": calibration.method,
        "target_false_alarm_rate": calibration.false_alarm_rate,
        "false_alarm_rate": float(flagged[good].float().mean()) if good.any() else None,
        "miss_rate": float((~flagged[~good]).float().mean()) if (~good).any() else None,
        "pixel_threshold": calibration.pixel_threshold,
    }
    pixels = result.maps >= calibration.pixel_threshold
    # per pixel as calibrated: all pixels of the good images; defect pixels where masks exist
    out["pixel_false_alarm_rate"] = float(pixels[good].float().mean()) if good.any() else None
    if result.masks is not None and result.masks.any():
        out["pixel_miss_rate"] = float((~pixels[result.masks]).float().mean())
    return out
