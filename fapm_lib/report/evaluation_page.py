"""``fapm evaluate --report``: the evaluation's ``report.html`` (:mod:`fapm_lib.report.html`),
every test image as a calibrated overlay with its truth, the metrics, and explanations of the
examples :func:`~fapm_lib.decisions.evaluation.pick_examples` picks (the highest-scored defects and
good images, the lowest-scored defects) when the model can explain."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.samples import SampleDataset
from ..decisions.evaluation import EvalResult, pick_examples
from ..decisions.nearest_patch import explain_images
from ..errors import ConfigError
from .explanation_panel import explanation_panel, layer_caption
from .html import THUMB_SIDE, ReportImage, data_uri, model_settings, write_report
from .viz import calibrated_overlay, denormalize, overlay

#: Test images explained in an evaluation report.
EXPLAINED = 12
METRIC_KEYS = ("image_auroc", "pixel_auroc", "pixel_f1_max", "pixel_aupro", "threshold", "false_alarm_rate",
               "miss_rate", "pixel_threshold", "n_train", "n_test", "ms_per_image")


def evaluation_images(model, result: EvalResult, dataset: SampleDataset) -> list[ReportImage]:
    """One :class:`ReportImage` per test image: its overlay (calibrated when the model is, the
    ground truth in green), score, decision and truth (``good`` or its defect type)."""
    cal, images = model.calibration, []
    for i, path in enumerate(result.paths):
        rgb = denormalize(dataset[i]["image"], dataset.transform.mean, dataset.transform.std)
        raw, truth = float(result.scores[i]), result.masks[i].numpy() if result.masks is not None else None
        name = f"{result.defect_types[i]}/{Path(path).name}"
        if cal is None:
            picture, score, decision = overlay(rgb, result.maps[i].numpy(), mask=truth), None, "uncalibrated"
        else:
            picture = calibrated_overlay(rgb, cal.pixel_score(result.maps[i]).numpy(),
                                         result.maps[i].numpy() >= cal.pixel_threshold,
                                         truth=truth if truth is not None and truth.any() else None)
            score, decision = float(cal.score(raw)), cal.decide(raw)
        images.append(ReportImage(name, data_uri(picture, "JPEG", THUMB_SIDE), raw, score, decision,
                                  "good" if result.labels[i] == 0 else result.defect_types[i]))
    return images


def write_evaluation_report(path: Path, model, result: EvalResult, dataset: SampleDataset,
                            metrics: dict[str, Any]) -> Path:
    """Write the evaluation's ``report.html``; explanations of up to :data:`EXPLAINED` test images."""
    images, notes = evaluation_images(model, result, dataset), []
    picks = pick_examples(result, EXPLAINED)
    try:
        for i, why in zip(picks, explain_images(model, [result.paths[i] for i in picks])):
            images[i].explanation = data_uri(explanation_panel(why, f"{images[i].name}: raw {images[i].raw_score:.3f}"),
                                             "JPEG")
            images[i].explanation_text = "; ".join(layer_caption(m) for m in why.layers)
    except ConfigError as exc:
        notes.append(f"No explanations: {exc}")
    shown = {k: metrics.get(k) for k in METRIC_KEYS if k in metrics}
    settings = {**model_settings(model), **{k: str(v) for k, v in metrics.get("settings", {}).items()
                                             if k not in ("config", "calibration")}}
    return write_report(path, "fapm evaluate", images, model.calibration, settings, shown, notes)
