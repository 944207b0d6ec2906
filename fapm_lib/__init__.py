"""fapm_lib: FAPM (Fast Adaptive Patch Memory, Kim et al., ICASSP 2023) and a PatchCore
baseline, thin and tested.

>>> from fapm_lib import FAPM, FAPMConfig, MVTecDataset
>>> model = FAPM(FAPMConfig(backbone="tf_efficientnet_lite0"))
>>> model.fit(MVTecDataset("data/builtin", "vial", "train", model.transform))
>>> prediction = model.predict(images)        # anomaly_map [B, 224, 224], pred_score [B]
>>> result = model.predict_image("part.png")  # score, OK/NG decision, map and mask

The package, by role (each layer imports only the layers before it; ``tests/test_layering.py``):
``errors``, ``system`` (atomic files, allocator, budgets, timing, jobs), ``config``, ``data``
(images, transform, MVTec layout, folders, the built-in dataset), ``method`` (backbone, regions,
coreset, memory, scoring, the FAPM and PatchCore torch modules), ``scale`` (fits in a memory
budget), ``decisions`` (calibration, results, metrics, evaluation), ``detectors`` (FAPM and
PatchCore: fit, predict, save, load), ``report`` (pictures, tables), ``deploy`` (export,
runtimes), ``tutorial`` (notebook helpers, explorer, ablations), ``workflows`` (what the commands
do), ``cli``.

The names below are imported on first use, so ``import fapm_lib`` (and the ``fapm`` command's
start and ``--help``) does not load torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import BackboneError, ConfigError, DataError, FAPMError, ModelFileError

__version__ = "0.2.0"
#: public name -> the module that defines it
_LAZY = {
    "FAPM": "detectors.fapm", "PatchCore": "detectors.patchcore", "FAPMConfig": "config",
    "FAPMModel": "method.fapm", "PatchCoreModel": "method.patchcore", "Prediction": "method.scoring",
    "MVTecDataset": "data.mvtec", "Transform": "data.transform", "load_image": "data.images",
    "list_images": "data.folders", "Calibration": "decisions.calibration", "Result": "decisions.results",
    "compute_metrics": "decisions.metrics", "run_test_set": "decisions.evaluate",
    "create_feature_extractor": "method.backbone", "export_model": "deploy.export",
    "ExportedModel": "deploy.exported", "tune_allocator": "system.allocator",
}
__all__ = [*_LAZY, "FAPMError", "DataError", "ConfigError", "ModelFileError", "BackboneError"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
