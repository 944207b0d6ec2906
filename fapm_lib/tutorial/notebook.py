"""Small helpers for the tutorial notebooks: data location, quick subsets, tables, ROC points,
per-stage timing."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.mvtec import MVTecDataset
from ..decisions.metrics import scores_to_unit
from ..errors import DataError
from ..report.tables import markdown_table
from ..system.allocator import tune_allocator
from ..system.timing import predict_by_stage

__all__ = ["layout_tree", "markdown_table", "prepare_data", "roc_points", "subset", "time_stages"]


def prepare_data(data_root: str | Path, category: str) -> Path:
    """Absolute data root holding ``category``. A missing built-in category is generated
    (the whole built-in set, once); anything else missing is a DataError naming the folder.

    Every notebook starts here, so this also applies :func:`fapm_lib.system.allocator.tune_allocator`
    (the same allocator settings as the ``fapm`` command)."""
    from ..data.synthetic import CATEGORIES, ensure_dataset

    tune_allocator()

    root = Path(data_root).expanduser().resolve()
    if (root / category).is_dir():
        return root
    if category in CATEGORIES:
        return ensure_dataset(root).resolve()
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    raise DataError(f"{root}: no category folder '{category}' (found: {', '.join(available) or 'none'})")


def subset(dataset: MVTecDataset, n: int | None) -> MVTecDataset:
    """A copy keeping ``n`` evenly spaced samples (samples are sorted by type, so every type is
    represented when ``n`` allows); the dataset itself when ``n`` is None or not smaller."""
    if n is None or n >= len(dataset):
        return dataset
    keep = np.linspace(0, len(dataset) - 1, n).round().astype(int)
    small = copy.copy(dataset)
    small.samples = [dataset.samples[i] for i in sorted(set(keep.tolist()))]
    return small


def layout_tree(root: str | Path, category: str, per_folder: int = 2) -> str:
    """Text tree of ``root/category``: every folder with its file count and first files."""
    base = Path(root) / category
    lines = [f"{base}/"]
    for folder in sorted(p for p in base.rglob("*") if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f.name for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        depth = len(folder.relative_to(base).parts)
        shown = ", ".join(files[:per_folder]) + (", ..." if len(files) > per_folder else "")
        suffix = f"  ({len(files)} files: {shown})" if files else ""
        lines.append("    " * depth + f"{folder.name}/{suffix}")
    return "\n".join(lines)


def roc_points(scores: Tensor, targets: Tensor, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr) of ``scores`` against binary ``targets`` (any equal shapes), exact,
    thinned to at most ``max_points`` points for plotting."""
    from torchmetrics.functional.classification import binary_roc

    unit = scores_to_unit(scores)  # min-max rescaled, the order kept (binary_roc would apply a sigmoid)
    fpr, tpr, _ = binary_roc(unit, targets.flatten().long().cpu())
    step = max(1, len(fpr) // max_points)
    keep = torch.cat([torch.arange(0, len(fpr), step), torch.tensor([len(fpr) - 1])])
    return fpr[keep].numpy(), tpr[keep].numpy()


def time_stages(model, images: Tensor, repeats: int = 10) -> dict[str, float]:
    """Milliseconds per image of backbone (features + pooling), search (k-NN) and
    post-processing (map + score) of a fitted detector for ``images [B, 3, S, S]``, after one
    warm-up run; medians over ``repeats`` (:func:`fapm_lib.system.timing.predict_by_stage`,
    device synchronised), and their sum."""
    module = model.runnable()
    images = images.to(model.device)
    predict_by_stage(module, images)  # warm-up: first-call allocations, lazy initialisation
    runs = [predict_by_stage(module, images)[1].wall for _ in range(repeats)]
    names = {"backbone": "backbone", "search": "search", "post": "post-processing"}
    per_image = {label: 1000 * float(np.median([run[stage] for run in runs])) / images.shape[0]
                 for stage, label in names.items()}
    per_image["total"] = sum(per_image.values())
    return per_image
