"""The detectors users fit and run: FAPM and the PatchCore baseline (settings, fit, calibration,
predictions, model files)."""
