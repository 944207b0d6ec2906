"""Run a fitted model over a test split: maps, scores, metrics, timings, heatmap overlays."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .base import PatchModel
from .calibration import Calibration
from .data import MVTecDataset, make_loader
from .metrics import compute_metrics
from .timing import STAGES, predict_by_stage


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


def run_test_set(model: PatchModel, dataset: MVTecDataset, progress: bool = True, metrics: bool = True) -> EvalResult:
    """Predict every test image (batched) and compute the four metrics (unless ``metrics`` is False).

    ``ms_per_image`` is wall time of backbone + search + post-processing per image, batched,
    without data loading; ``stage_ms`` splits it by stage.
    """
    scores, labels, maps, masks, paths, types = [], [], [], [], [], []
    seconds = dict.fromkeys(STAGES, 0.0)
    loader = make_loader(dataset, batch_size=model.config.batch_size)
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        images = batch["image"].to(model.device)
        pred, timer = predict_by_stage(model, images)
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


def save_heatmaps(result: EvalResult, dataset: MVTecDataset, output_dir: Path, n: int = 6,
                  calibration: Calibration | None = None) -> list[Path]:
    """Overlay PNGs (image | heatmap | mask) of a few chosen test images into ``output_dir``:
    with a calibration on its fixed scale (normalised pixel score 0..1, 0.5 at the pixel
    threshold), else on the test maps' common range."""
    from .viz import denormalize, result_panel, save_png

    vmin, vmax = (0.0, 1.0) if calibration else (float(result.maps.min()), float(result.maps.max()))
    written = []
    for i in pick_examples(result, n):
        item = dataset[i]
        rgb = denormalize(item["image"], dataset.transform.mean, dataset.transform.std)
        mask = result.masks[i].numpy() if result.masks is not None else None
        raw = float(result.scores[i])
        shown = result.maps[i] if calibration is None else calibration.pixel_score(result.maps[i])
        title = f"{result.defect_types[i]}/{Path(result.paths[i]).name}  raw {raw:.3f}"
        if calibration is not None:
            title += f" {calibration.decide(raw)}"
        score = raw if calibration is None else float(calibration.score(raw))
        panel = result_panel(rgb, shown.numpy(), mask, score, title, vmin, vmax)
        written.append(save_png(output_dir / f"{result.defect_types[i]}_{Path(result.paths[i]).stem}.png", panel))
    return written
