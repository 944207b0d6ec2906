"""Answers of ``POST /predict`` as JSON-ready dicts: the decision and the numbers behind it, the
model that produced it, and on request the calibrated overlay and the nearest normal patch."""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..decisions.results import Result
from ..report.explanation_panel import explanation_panel
from ..report.html import data_uri
from ..report.viz import calibrated_overlay, overlay, with_caption
from .part_scoring import ScoredPart


def result_fields(result: Result) -> dict[str, Any]:
    """Decision, normalised and raw score, thresholds, and the share of the image's pixels at or
    above the pixel threshold (None for an uncalibrated model)."""
    cal = result.calibration
    return {"decision": result.decision, "score": result.score, "raw_score": result.raw_score,
            "image_threshold": None if cal is None else cal.image_threshold,
            "pixel_threshold": None if cal is None else cal.pixel_threshold,
            "ng_pixel_share": None if result.mask is None else float(result.mask.mean()),
            "width": int(result.anomaly_map.shape[1]), "height": int(result.anomaly_map.shape[0])}


def overlay_picture(image: Image.Image, result: Result, caption: str) -> np.ndarray:
    """The calibrated overlay ``fapm predict`` writes (fixed colour scale, 0.5 at the pixel
    threshold, the mask outlined); for an uncalibrated model the image's own range."""
    rgb = np.asarray(image)
    if result.calibration is None:
        return with_caption(overlay(rgb, result.anomaly_map), f"{caption}  (uncalibrated: own range)")
    return calibrated_overlay(rgb, result.score_map(), result.mask, caption)


def caption(result: Result, model_id: str) -> str:
    if result.score is None:
        return f"raw {result.raw_score:.3f}  {result.decision}  model {model_id}"
    return f"score {result.score:.3f}  {result.decision}  (raw {result.raw_score:.3f})  model {model_id}"


def answer(scored: ScoredPart, image: Image.Image, heatmap: bool = False, explain: bool = False) -> dict[str, Any]:
    """The JSON answer for one part (``ms`` and the timing fields are added by the caller)."""
    result, loaded = scored.result, scored.model
    out = {**result_fields(result), "model": {"id": loaded.id, "name": loaded.name}}
    if heatmap:
        out["heatmap"] = data_uri(overlay_picture(image, result, caption(result, loaded.id)), "PNG")
    if explain:
        why = scored.explanation
        out["explanation"] = None if why is None else {
            **why.to_dict(), "panel": data_uri(explanation_panel(why, caption(result, loaded.id)), "PNG")}
        if scored.explain_error is not None:
            out["explanation_error"] = scored.explain_error
    return out
