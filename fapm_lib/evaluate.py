"""Run a fitted model over a test split: maps, scores, metrics, timings, heatmap overlays."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .base import PatchModel
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


def run_test_set(model: PatchModel, dataset: MVTecDataset, progress: bool = True) -> EvalResult:
    """Predict every test image (batched) and compute the four metrics.

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


def save_heatmaps(result: EvalResult, dataset: MVTecDataset, output_dir: Path, n: int = 6) -> list[Path]:
    """Overlay PNGs (image | heatmap | mask) of a few chosen test images into ``output_dir``."""
    from .viz import denormalize, result_panel, save_png

    vmin, vmax = float(result.maps.min()), float(result.maps.max())
    written = []
    for i in pick_examples(result, n):
        item = dataset[i]
        rgb = denormalize(item["image"], dataset.transform.mean, dataset.transform.std)
        mask = result.masks[i].numpy() if result.masks is not None else None
        title = f"{result.defect_types[i]}/{Path(result.paths[i]).name}  score {float(result.scores[i]):.3f}"
        panel = result_panel(rgb, result.maps[i].numpy(), mask, float(result.scores[i]), title, vmin, vmax)
        written.append(save_png(output_dir / f"{result.defect_types[i]}_{Path(result.paths[i]).stem}.png", panel))
    return written
