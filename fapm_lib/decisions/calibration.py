"""Calibration from normal images only: thresholds and the normalised score.

The shared contract (used by prediction, evaluation and export):

* ``Calibration.image_threshold`` / ``pixel_threshold``: raw-score units (summed L2 distances).
* ``Calibration.image_scale`` / ``pixel_scale``: the spread that sets the slope of the
  normalised score (the standard deviation of the held-out normal scores, floored > 0).
* normalised score = ``sigmoid((raw - threshold) / scale)``: in (0, 1), exactly 0.5 at the
  threshold, monotonic, so ``score >= 0.5`` <=> ``raw >= threshold`` <=> ``NG``.

How the thresholds are found (:func:`fapm_lib.decisions.heldout.calibrate_regions`, run at the end of ``FAPM.fit``):
the training images are split into ``calibration_folds`` interleaved folds (image ``i`` in fold
``i % folds``); for each fold, memories are built from the other folds' region features
(row subsets of the features already extracted, no second backbone pass) and the fold's images
are scored against them, each query in its own region and layer. Every training image is so
scored by a memory that never saw it. The image threshold is the ``1 - false_alarm_rate``
quantile of these held-out image scores, the pixel threshold the same quantile of all pixels
of their anomaly maps (:func:`quantile_threshold`: numpy's linear interpolation between order
statistics). With ``n`` images the image rule is resolved in steps of ``1/n``: for a rate below
``1/(n - 1)`` the threshold falls between the two largest held-out scores. The final memory is
built from all images, as without calibration.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import neighbours_read
from ..errors import ConfigError, ModelFileError
from ..method.scoring import image_score

#: Neighbours kept per held-out image, so that ``k`` / ``image_score`` can change after fitting.
K_KEPT = 16
#: Pixel false-alarm rates at which the held-out pixel quantiles are stored (log-spaced).
PIXEL_TABLE_RATES = tuple(float(r) for r in np.geomspace(0.5, 1e-5, 47))
QUANTILE_RULE = ("threshold = the (1 - false_alarm_rate) quantile of the held-out normal values "
                 "(numpy linear interpolation between order statistics); NG when raw >= threshold")


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
    image_score: str = "max"  # the image-score mode the image threshold is in
    k: int = 1                # the neighbours that score read

    def decide(self, raw: float) -> str:
        """``"NG"`` when ``raw >= image_threshold`` (normalised score >= 0.5), else ``"OK"``."""
        return "NG" if raw >= self.image_threshold else "OK"

    def score(self, raw: Tensor | float) -> Tensor | float:
        """Normalised image score in (0, 1), 0.5 at the image threshold."""
        return normalize_score(raw, self.image_threshold, self.image_scale)

    def pixel_score(self, raw: Tensor | float) -> Tensor | float:
        """Normalised pixel score in (0, 1), 0.5 at the pixel threshold."""
        return normalize_score(raw, self.pixel_threshold, self.pixel_scale)

    def brief(self) -> dict[str, Any]:
        """Everything but the stored distributions: for metrics.json and logs."""
        keep = {k: v for k, v in self.summary.items() if k not in ("neighbours",)}
        for part in ("image", "pixel"):
            if isinstance(keep.get(part), dict):
                keep[part] = {k: v for k, v in keep[part].items() if k not in ("values", "table")}
        return {**{k: v for k, v in asdict(self).items() if k != "summary"}, "summary": keep}

    def to_header(self) -> dict[str, Any]:
        """JSON-ready dict for the model file's header."""
        return asdict(self)

    @classmethod
    def from_header(cls, values: dict[str, Any] | None, source: str = "model file") -> "Calibration | None":
        """Inverse of :meth:`to_header`; None stays None; ModelFileError on a malformed entry."""
        if values is None:
            return None
        try:
            cal = cls(**values)
            numbers = (cal.image_threshold, cal.image_scale, cal.pixel_threshold, cal.pixel_scale)
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers) or min(numbers[1::2]) <= 0:
                raise ValueError("thresholds must be finite and scales > 0")
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{source}: malformed calibration ({exc})") from None
        return cal


def normalize_score(raw: Tensor | float, threshold: float, scale: float) -> Tensor | float:
    """Raw score -> ``sigmoid((raw - threshold) / scale)``: 0.5 exactly at ``threshold``."""
    if isinstance(raw, Tensor):
        return torch.sigmoid((raw - threshold) / scale)
    z = -(raw - threshold) / scale
    return 0.0 if z > 700 else 1.0 / (1.0 + math.exp(z))


# ---- rules -------------------------------------------------------------------------------------
def quantile_threshold(values: np.ndarray | Tensor, false_alarm_rate: float) -> float:
    """The ``1 - false_alarm_rate`` quantile of ``values`` (any shape; linear interpolation)."""
    flat = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).ravel()
    return float(np.quantile(flat, 1.0 - false_alarm_rate))


def spread(values: np.ndarray) -> float:
    """Standard deviation, floored at ``1e-6 * max(1, |mean|)`` so the scale stays > 0."""
    values = np.asarray(values, dtype=np.float64)
    return floor_spread(float(values.std()), float(values.mean()))


def floor_spread(std: float, mean: float) -> float:
    """``std`` floored at ``1e-6 * max(1, |mean|)`` (:func:`spread` of known figures)."""
    return float(max(std, 1e-6 * max(1.0, abs(mean))))


def describe(values: np.ndarray, keep_values: bool = False) -> dict[str, Any]:
    """n, mean, std, min, max and quantiles (0.5, 0.9, 0.95, 0.99) of ``values``; the values
    themselves with ``keep_values`` (image scores: few)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    qs = (0.5, 0.9, 0.95, 0.99)
    out: dict[str, Any] = {"n": int(flat.size), "mean": float(flat.mean()), "std": float(flat.std()),
                           "min": float(flat.min()), "max": float(flat.max()),
                           "quantiles": {str(q): float(v) for q, v in zip(qs, np.quantile(flat, qs))}}
    if keep_values:
        out["values"] = [float(v) for v in flat]
    return out


def f1_optimal_threshold(values: np.ndarray | Tensor, targets: np.ndarray | Tensor) -> tuple[float, float]:
    """The threshold ``t`` (one of the values) maximising F1 of ``values >= t`` against the 0/1
    ``targets`` (any shape); returns ``(t, best F1)``."""
    v = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).ravel()
    y = np.asarray(targets.detach().cpu() if isinstance(targets, Tensor) else targets).ravel().astype(bool)
    if not y.any() or y.all():
        raise ConfigError("validation data: the F1 threshold needs both normal and defective samples")
    order = np.argsort(-v, kind="stable")
    v, y = v[order], y[order]
    tp = np.cumsum(y)
    last = np.r_[v[1:] != v[:-1], True]  # end of each run of equal values: ties decided together
    tp, flagged = tp[last], np.nonzero(last)[0] + 1
    f1 = 2 * tp / (flagged + y.sum())
    best = int(np.argmax(f1))
    return float(v[last][best]), float(f1[best])


def image_scores(neighbours: Tensor, mode: str, k: int) -> Tensor:
    """Image scores ``[B]`` from the held-out neighbours ``[B, >=k]``
    (:func:`~fapm_lib.method.scoring.top_neighbours`), as :func:`~fapm_lib.method.scoring.image_score`."""
    if k > neighbours.shape[1]:
        raise ConfigError(f"k={k} exceeds the {neighbours.shape[1]} neighbours the calibration kept; refit with this k")
    return image_score(neighbours[:, None, None, : neighbours_read(mode, k)], mode)


# ---- changes after fitting -------------------------------------------------------------------
def rescore(cal: Calibration, image_score: str, k: int, false_alarm_rate: float) -> Calibration:
    """The false-alarm-rate calibration for another image score, ``k`` or rate, from the stored
    held-out neighbours and pixel quantile table (no refit)."""
    neighbours = cal.summary.get("neighbours")
    if not neighbours:
        raise ConfigError("the model's calibration holds no held-out scores to rescore; refit it")
    k = neighbours_read(image_score, k)
    scores = image_scores(torch.tensor(neighbours), image_score, k).numpy()
    summary = {**cal.summary, "image": describe(scores, keep_values=True)}
    pixel_threshold = cal.pixel_threshold
    if cal.method != "false_alarm_rate" or false_alarm_rate != cal.false_alarm_rate:
        pixel_threshold = pixel_threshold_at(cal, false_alarm_rate)
    return Calibration(quantile_threshold(scores, false_alarm_rate), spread(scores), pixel_threshold, cal.pixel_scale,
                       "false_alarm_rate", false_alarm_rate, summary, image_score, k)


def pixel_threshold_at(cal: Calibration, false_alarm_rate: float) -> float:
    """Pixel threshold at another rate, interpolated (in log rate) in the stored quantile table."""
    table = cal.summary.get("pixel", {}).get("table")
    if not table:
        raise ConfigError("the model's calibration holds no pixel quantiles; refit it")
    rates, values = np.log(table["false_alarm_rate"]), np.asarray(table["threshold"])
    lo, hi = min(table["false_alarm_rate"]), max(table["false_alarm_rate"])
    if not lo <= false_alarm_rate <= hi:
        raise ConfigError(f"false_alarm_rate={false_alarm_rate} is outside the stored pixel quantiles "
                          f"({lo:g} to {hi:g}); refit with this rate")
    return float(np.interp(np.log(false_alarm_rate), rates[::-1], values[::-1]))


def manual(cal: Calibration | None, threshold: float | None, pixel_threshold: float | None,
           image_score: str = "max", k: int = 1) -> Calibration:
    """A manual override of the image and/or pixel threshold (raw units), recorded as ``manual``.
    Without a calibration both are needed, and the scales are a tenth of the thresholds."""
    if cal is None and (threshold is None or pixel_threshold is None):
        raise ConfigError("--threshold and --pixel-threshold are both needed for a model without calibration")
    for name, value in (("--threshold", threshold), ("--pixel-threshold", pixel_threshold)):
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{name} {value}: must be a finite number")
    if cal is None:
        assert threshold is not None and pixel_threshold is not None
        return Calibration(threshold, max(abs(threshold) / 10, 1e-6), pixel_threshold,
                           max(abs(pixel_threshold) / 10, 1e-6), "manual", None,
                           {"scale": "a tenth of the threshold (no held-out normal scores)"}, image_score, k)
    summary = {**cal.summary, "calibrated": {"method": cal.method, "image_threshold": cal.image_threshold,
                                             "pixel_threshold": cal.pixel_threshold}}
    return replace(cal, image_threshold=cal.image_threshold if threshold is None else threshold,
                   pixel_threshold=cal.pixel_threshold if pixel_threshold is None else pixel_threshold,
                   method="manual", summary=summary)


def from_validation(cal: Calibration | None, scores: Tensor, labels: Tensor, maps: Tensor, masks: Tensor | None,
                    image_score: str, k: int) -> Calibration:
    """F1-optimal thresholds on labelled validation images (never the test set): image F1 on
    ``scores [N]`` vs ``labels [N]``, pixel F1 on ``maps [N, S, S]`` vs ``masks``. Scales:
    the calibration's (held-out normal spread), else the spread of the validation good images."""
    image_threshold, image_f1 = f1_optimal_threshold(scores, labels)
    good = labels == 0
    if masks is not None and masks.any():
        pixel_threshold, pixel_f1 = f1_optimal_threshold(maps, masks)
    elif cal is not None:
        pixel_threshold, pixel_f1 = cal.pixel_threshold, None
    else:
        raise ConfigError("validation data: no defect masks for the pixel threshold")
    image_scale = cal.image_scale if cal is not None and cal.image_score == image_score and cal.k == k \
        else spread(scores[good].numpy())
    pixel_scale = cal.pixel_scale if cal is not None else spread(maps[good].numpy())
    summary = {**(cal.summary if cal is not None else {}),
               "validation": {"n_images": int(len(labels)), "n_defective": int(labels.sum()),
                              "image_f1": image_f1, "pixel_f1": pixel_f1}}
    return Calibration(image_threshold, image_scale, pixel_threshold, pixel_scale, "f1_validation",
                       None, summary, image_score, neighbours_read(image_score, k))
