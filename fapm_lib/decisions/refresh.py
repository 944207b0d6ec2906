"""Refreshing a calibration when normal images are added to a fitted model (``fapm update``),
without the old images' features.

What the model file keeps of the old held-out normal predictions: every image's neighbours
(``summary["neighbours"]``, so its held-out image score) and the pixel distribution as a
47-point quantile table (``summary["pixel"]["table"]``: the pixel value at log-spaced
false-alarm rates 0.5 .. 1e-5) with its n, mean, std, min and max. The added images are scored by
the memory *before* the update, which never saw them: held-out scores, as the k-fold gives the
old ones. Then:

- **image threshold** = the usual quantile rule (:func:`~fapm_lib.decisions.calibration.quantile_threshold`)
  over the old and the new held-out image scores together: exact, as a fit would compute it from
  these scores;
- **pixel threshold**: the pixel distribution is the mixture of the old one, read from its table,
  and the new images' exact pixel values, weighted by their image counts (every image has
  ``S x S`` pixels). The old exceedance ``P(pixel >= t)`` is interpolated linearly in log rate
  between the table's points; below the 0.5 point it falls linearly to 1 at the old minimum,
  above the 1e-5 point linearly to 0 at the old maximum. The threshold solves
  ``mixture exceedance = false_alarm_rate`` (bisection). An approximation: between two table
  points the old distribution is assumed log-linear; the tests bound the error.
- the new table, n, mean, std, min, max, the merged neighbours and the image values are stored,
  so a second update composes with the first (``summary["updates"]`` lists them).

Thresholds set by ``manual`` or ``f1_validation`` are kept (no rule here could redo them); their
stored distributions are refreshed all the same.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .calibration import PIXEL_TABLE_RATES, Calibration, describe, image_scores, quantile_threshold, spread

PIXEL_RULE = ("pixel threshold from the mixture of the stored pixel quantile table (old held-out images, "
              "log-linear between its points) and the added images' exact pixel values, weighted by image count")


class PixelMixture:
    """The exceedance ``P(pixel >= t)`` of old held-out pixels (a quantile table and their
    min / max) mixed with new exact pixel values ``[M]``, with weights ``n_old`` and ``n_new`` images."""

    def __init__(self, table: dict, low: float, high: float, n_old: int, new: np.ndarray, n_new: int) -> None:
        rates = np.asarray(table["false_alarm_rate"], dtype=np.float64)
        values = np.asarray(table["threshold"], dtype=np.float64)
        order = np.argsort(values, kind="stable")  # thresholds ascending, rates descending
        self.values, self.log_rates = values[order], np.log(rates[order])
        self.low, self.high = min(low, float(self.values[0])), max(high, float(self.values[-1]))
        self.new = np.sort(np.asarray(new, dtype=np.float64).ravel())
        self.w_old, self.w_new = n_old / (n_old + n_new), n_new / (n_old + n_new)

    def old_exceedance(self, t: np.ndarray) -> np.ndarray:
        """``P_old(pixel >= t)`` from the table (see the module's rule)."""
        t = np.asarray(t, dtype=np.float64)
        first, last = self.values[0], self.values[-1]
        r_first, r_last = np.exp(self.log_rates[0]), np.exp(self.log_rates[-1])
        inside = np.exp(np.interp(t, self.values, self.log_rates))
        below = r_first + (1 - r_first) * np.clip((first - t) / max(first - self.low, 1e-12), 0, 1)
        above = r_last * np.clip((self.high - t) / max(self.high - last, 1e-12), 0, 1)
        return np.where(t < first, below, np.where(t > last, above, inside))

    def exceedance(self, t: np.ndarray) -> np.ndarray:
        """The mixture's ``P(pixel >= t)``."""
        new = 1.0 - np.searchsorted(self.new, t, side="left") / max(len(self.new), 1)
        return self.w_old * self.old_exceedance(t) + self.w_new * new

    def quantile(self, rates: np.ndarray, steps: int = 80) -> np.ndarray:
        """The ``t`` with ``exceedance(t) = rate`` for each rate (bisection, vectorised)."""
        rates = np.asarray(rates, dtype=np.float64)
        lo = np.full_like(rates, min(self.low, float(self.new[0]) if len(self.new) else self.low))
        hi = np.full_like(rates, max(self.high, float(self.new[-1]) if len(self.new) else self.high))
        for _ in range(steps):
            mid = (lo + hi) / 2
            above = self.exceedance(mid) > rates  # still too many pixels flagged: go higher
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return (lo + hi) / 2


def refresh(cal: Calibration, neighbours: Tensor, maps: Tensor, note: dict | None = None) -> Calibration:
    """The calibration once normal images are added: ``neighbours [n, k']`` and anomaly
    ``maps [n, S, S]`` are the added images' held-out predictions (by the memory before the
    update). See the module's rules; ``note`` is recorded in ``summary["updates"]``."""
    summary = cal.summary
    old_neighbours, pixel = summary.get("neighbours"), summary.get("pixel", {})
    if not old_neighbours or not pixel.get("table"):
        raise ConfigError("the model's calibration holds no held-out scores to refresh; refit it, or pass "
                          "--calibration-folds 0 to refit uncalibrated")
    old = torch.tensor(old_neighbours, dtype=neighbours.dtype)
    k = min(old.shape[1], neighbours.shape[1])
    merged = torch.cat([old[:, :k], neighbours[:, :k].cpu()])
    scores = image_scores(merged, cal.image_score, cal.k).numpy()
    n_old, n_new = int(summary.get("n_images", old.shape[0])), int(neighbours.shape[0])
    new_pixels = maps.detach().cpu().numpy().astype(np.float64).ravel()
    mixture = PixelMixture(pixel["table"], pixel["min"], pixel["max"], n_old, new_pixels, n_new)
    table = mixture.quantile(np.asarray(PIXEL_TABLE_RATES))
    mean = mixture.w_old * pixel["mean"] + mixture.w_new * float(new_pixels.mean())
    second = (mixture.w_old * (pixel["std"] ** 2 + pixel["mean"] ** 2)
              + mixture.w_new * float((new_pixels ** 2).mean()))
    std = float(np.sqrt(max(second - mean ** 2, 0.0)))
    qs = (0.5, 0.9, 0.95, 0.99)
    pixels = {"n": int(pixel["n"]) + int(new_pixels.size), "mean": mean, "std": std,
              "min": min(pixel["min"], float(new_pixels.min())), "max": max(pixel["max"], float(new_pixels.max())),
              "quantiles": {str(q): float(v) for q, v in zip(qs, mixture.quantile(np.asarray([1 - q for q in qs])))},
              "table": {"false_alarm_rate": list(PIXEL_TABLE_RATES), "threshold": [float(v) for v in table]},
              "rule": PIXEL_RULE}
    updates = [*summary.get("updates", []), {"n_added": n_new, "n_images_before": n_old, **(note or {})}]
    new_summary = {**summary, "n_images": n_old + n_new, "image": describe(scores, keep_values=True),
                   "pixel": pixels, "neighbours": merged.tolist(), "updates": updates}
    if cal.method != "false_alarm_rate":  # manual / f1_validation: no rule here redoes them
        return Calibration(cal.image_threshold, cal.image_scale, cal.pixel_threshold, cal.pixel_scale, cal.method,
                           cal.false_alarm_rate, new_summary, cal.image_score, cal.k)
    rate = float(cal.false_alarm_rate)
    pixel_threshold = float(mixture.quantile(np.asarray([rate]))[0])
    return Calibration(quantile_threshold(scores, rate), spread(scores), pixel_threshold,
                       max(std, 1e-6 * max(1.0, abs(mean))), "false_alarm_rate", rate, new_summary,
                       cal.image_score, cal.k)
