"""fapm_lib: FAPM (Fast Adaptive Patch Memory, Kim et al., ICASSP 2023) and a PatchCore
baseline, thin and tested.

>>> from fapm_lib import FAPM, FAPMConfig, MVTecDataset
>>> model = FAPM(FAPMConfig(backbone="tf_efficientnet_lite0"))
>>> model.fit(MVTecDataset("data/builtin", "vial", "train", model.transform))
>>> prediction = model.predict(images)        # anomaly_map [B, 224, 224], pred_score [B]

The names below are imported on first use, so ``import fapm_lib`` (and the ``fapm`` command's
start and ``--help``) does not load torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import BackboneError, ConfigError, DataError, FAPMError, ModelFileError

__version__ = "0.1.0"
_LAZY = {"FAPM": "model", "FAPMConfig": "config", "PatchCore": "patchcore", "Prediction": "base",
         "MVTecDataset": "data", "Transform": "data", "tune_allocator": "allocator",
         "Calibration": "calibration", "Result": "inference"}
__all__ = [*_LAZY, "FAPMError", "DataError", "ConfigError", "ModelFileError", "BackboneError"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
