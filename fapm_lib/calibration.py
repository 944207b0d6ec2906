"""Calibration from normal images only: thresholds and the normalised score.

The shared contract (used by prediction, evaluation and export):

* ``Calibration.image_threshold`` / ``pixel_threshold``: raw-score units (summed L2 distances).
* ``Calibration.image_scale`` / ``pixel_scale``: the spread that sets the slope of the
  normalised score (the standard deviation of the held-out normal scores, floored > 0).
* normalised score = ``sigmoid((raw - threshold) / scale)``: in (0, 1), exactly 0.5 at the
  threshold, monotonic, so ``score >= 0.5`` <=> ``raw >= threshold`` <=> ``NG``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Calibration:
    """Thresholds chosen on training (normal) images alone, and the summary behind them."""

    image_threshold: float
    image_scale: float
    pixel_threshold: float
    pixel_scale: float
    method: str = "false_alarm_rate"  # or "f1_validation" / "manual"
    false_alarm_rate: float | None = 0.01
    summary: dict = field(default_factory=dict)


def normalize_score(raw: Tensor | float, threshold: float, scale: float) -> Tensor | float:
    """Raw score -> ``sigmoid((raw - threshold) / scale)``: 0.5 exactly at ``threshold``."""
    if isinstance(raw, Tensor):
        return torch.sigmoid((raw - threshold) / scale)
    return 1.0 / (1.0 + math.exp(-(raw - threshold) / scale))
