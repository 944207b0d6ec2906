"""fapm_lib: FAPM (Fast Adaptive Patch Memory, Kim et al., ICASSP 2023) and a PatchCore
baseline, thin and tested.

>>> from fapm_lib import FAPM, FAPMConfig, MVTecDataset
>>> model = FAPM(FAPMConfig(backbone="tf_efficientnet_lite0"))
>>> model.fit(MVTecDataset("data/builtin", "vial", "train", model.transform))
>>> prediction = model.predict(images)        # anomaly_map [B, 224, 224], pred_score [B]
>>> result = model.predict_image("part.png")  # score, OK/NG decision, map and mask
>>> result.explain()                          # the nearest normal patch of its most anomalous place
>>> model.add_good(FolderDataset(good="false_alarms/", transform=model.transform))  # no refit

The package, by role (each layer imports only the layers before it; ``tests/test_layering.py``):
``errors``, ``system`` (atomic files, allocator, budgets, timing, jobs), ``config``, ``data``
(images, transform, MVTec layout, folders, the built-in dataset), ``method`` (backbone, regions,
coreset, memory, scoring, the FAPM and PatchCore torch modules), ``scale`` (fits in a memory
budget), ``decisions`` (calibration, results, metrics, evaluation), ``detectors`` (FAPM and
PatchCore: fit, predict, save, load), ``report`` (pictures, tables), ``deploy`` (export,
runtimes), ``service`` (the HTTP service and the drop-folder watcher), ``tutorial`` (notebook
helpers, explorer, ablations), ``workflows`` (what the commands do), ``cli``.

The names below are imported on first use, so ``import fapm_lib`` (and the ``fapm`` command's
start and ``--help``) does not load torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import BackboneError, ConfigError, DataError, FAPMError, ModelFileError

__version__ = "0.2.0"
#: the public API, by role: module -> names (imported on first use)
_PUBLIC = {
    "config": ["FAPMConfig"],
    "system.atomic": ["write_text_atomic"],
    "system.allocator": ["tune_allocator"],
    "data.images": ["load_image"],
    "data.transform": ["Transform"],
    "data.mvtec": ["MVTecDataset", "default_shared_root"],
    "data.folders": ["FolderDataset", "list_images"],
    "data.synthetic": ["CATEGORIES", "generate_dataset", "ensure_dataset"],
    "method.backbone": ["create_feature_extractor"],
    "method.regions": ["split_regions", "merge_regions", "valid_grids"],
    "method.coreset": ["GreedyKCenter", "coreset_size"],
    "method.memory": ["LayerMemory"],
    "method.memory_builders": ["build_layer_memory"],
    "method.scoring": ["Prediction", "anomaly_map", "fuse_layers", "image_score", "upsample_nearest",
                       "upsample_official", "align_layer"],
    "method.fapm_model": ["FAPMModel"],
    "method.patchcore_model": ["PatchCoreModel"],
    "decisions.calibration": ["Calibration"],
    "decisions.results": ["Result"],
    "decisions.nearest_patch": ["Explanation", "explain_images"],
    "decisions.metrics": ["compute_metrics", "image_auroc", "pixel_auroc"],
    "decisions.evaluation": ["run_test_set", "pick_examples"],
    "detectors.fapm": ["FAPM"],
    "detectors.patchcore": ["PatchCore"],
    "report.viz": ["denormalize", "overlay", "calibrated_overlay", "plot_gallery"],
    "report.tables": ["markdown_table"],
    "report.explanation_panel": ["explanation_panel"],
    "report.html": ["write_report"],
    "deploy.graph_export": ["export_model"],
    "deploy.exported": ["ExportedModel"],
    "deploy.runtime_benchmark": ["build_runners", "single_times", "uint8_images"],
    "tutorial.notebook": ["prepare_data", "subset", "layout_tree", "roc_points", "time_stages"],
    "tutorial.explorer": ["Explorer", "build_widgets", "status_text"],
    "tutorial.ablations": ["default_variants", "extract_category", "run_ablation", "summary_table"],
}
_LAZY = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = [*_LAZY, "FAPMError", "DataError", "ConfigError", "ModelFileError", "BackboneError"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
