"""Decisions: thresholds from normal images (calibration, k-fold held-out scores), per-image
results, metrics and test-set evaluation."""
