"""From raw scores to decisions: the normalised score (one half exactly at the threshold), the
quantile rule on normal images' scores, the F1-optimal threshold on a labelled validation set."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fapm_lib.decisions.calibration import Calibration, f1_optimal_threshold, normalize_score, quantile_threshold


# ---- the mapping ------------------------------------------------------------------------------
def test_normalised_score_is_one_half_exactly_at_the_threshold() -> None:
    for threshold, scale in ((31.25, 1.5), (0.0, 1e-6), (-3.0, 7.0)):
        assert normalize_score(threshold, threshold, scale) == 0.5
        assert float(normalize_score(torch.tensor([threshold]), threshold, scale)) == 0.5
        raw = torch.linspace(threshold - 5, threshold + 5, 101)
        norm = normalize_score(raw, threshold, scale)
        assert torch.all(norm[1:] >= norm[:-1]) and norm.min() >= 0 and norm.max() <= 1
    cal = Calibration(10.0, 2.0, 5.0, 1.0)
    assert cal.decide(10.0) == "NG" and cal.decide(math.nextafter(10.0, 0)) == "OK"
    assert cal.score(10.0) == 0.5 and cal.pixel_score(5.0) == 0.5
    assert normalize_score(1e9, 0.0, 1.0) == 1.0 and normalize_score(-1e9, 0.0, 1.0) == 0.0  # no overflow


def test_quantile_rule() -> None:
    values = np.random.default_rng(0).normal(size=200)
    for rate in (0.01, 0.05, 0.2):
        threshold = quantile_threshold(values, rate)
        assert threshold == pytest.approx(np.quantile(values, 1 - rate))
        assert (values >= threshold).mean() <= rate + 1 / len(values)


def test_f1_optimal_threshold_decides_ties_together() -> None:
    values = np.array([0.1, 0.2, 0.5, 0.5, 0.9, 0.3])
    targets = np.array([0, 0, 1, 0, 1, 0])
    threshold, f1 = f1_optimal_threshold(values, targets)
    # candidates: >= 0.9 -> F1 2/3; >= 0.5 -> tp 2, flagged 3 -> 0.8; >= 0.3 -> 2/3
    assert threshold == 0.5 and f1 == pytest.approx(0.8)
