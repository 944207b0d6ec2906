"""Overlay pictures of an evaluation's test images (``metrics.json``'s ``heatmaps/``)."""
from __future__ import annotations

from pathlib import Path

from ..data.mvtec import MVTecDataset
from ..decisions.calibration import Calibration
from ..decisions.evaluation import EvalResult, pick_examples
from .viz import calibrated_overlay, denormalize, result_panel, save_png


def save_heatmaps(result: EvalResult, dataset: MVTecDataset, output_dir: Path, n: int = 6,
                  calibration: Calibration | None = None) -> list[Path]:
    """Overlay PNGs of a few chosen test images (:func:`pick_examples`) into ``output_dir``.

    Calibrated: the renderer of ``fapm predict`` (:func:`~fapm_lib.report.viz.calibrated_overlay`):
    the normalised pixel score on one fixed scale with its colour bar, the predicted mask in
    white, the ground truth in green, score and decision in the caption; a normal part looks
    clean. Uncalibrated: image | heatmap | mask on the test maps' common range."""
    vmin, vmax = float(result.maps.min()), float(result.maps.max())
    written = []
    for i in pick_examples(result, n):
        item = dataset[i]
        rgb = denormalize(item["image"], dataset.transform.mean, dataset.transform.std)
        truth = result.masks[i].numpy() if result.masks is not None else None
        raw = float(result.scores[i])
        name = f"{result.defect_types[i]}/{Path(result.paths[i]).name}"
        if calibration is None:
            picture = result_panel(rgb, result.maps[i].numpy(), truth, raw, f"{name}  raw {raw:.3f}  uncalibrated",
                                   vmin, vmax)
        else:
            score_map = calibration.pixel_score(result.maps[i]).numpy()
            caption = f"{name}  score {float(calibration.score(raw)):.3f} {calibration.decide(raw)}  (raw {raw:.3f})"
            picture = calibrated_overlay(rgb, score_map, result.maps[i].numpy() >= calibration.pixel_threshold,
                                         caption, truth=truth if truth is not None and truth.any() else None)
        written.append(save_png(output_dir / f"{result.defect_types[i]}_{Path(result.paths[i]).stem}.png", picture))
    return written
