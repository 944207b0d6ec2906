"""Small helpers for the tutorial notebooks: data location, quick subsets, tables, ROC points,
per-stage timing."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.mvtec import MVTecDataset
from ..decisions.metrics import scores_to_unit
from ..errors import DataError
from ..report.tables import markdown_table
from ..system.allocator import tune_allocator
from ..system.timing import predict_by_stage

__all__ = ["alignment_table", "example_groups", "graph_io_rows", "layout_tree", "markdown_table", "prepare_data",
           "roc_points", "sidecar_rows", "subset", "threshold_table", "time_stages"]


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


def alignment_table(fine: int, coarse: int, grid: int, region: int = 0) -> str:
    """Markdown table: for the fine (stride-8) cells of one region, which of the region's coarse
    (stride-16) cells each receives under the 2x2 tiling and under the official mapping
    (:func:`~fapm_lib.method.scoring.align_layer`). The coarse cells are lettered in reading
    order (A, B on the first coarse row, C, D on the second at grid 7); an entry reads
    ``tiling / official``, in bold where they differ."""
    from ..method.scoring import align_layer

    probe = torch.arange(coarse * coarse, dtype=torch.float32).reshape(1, coarse, coarse, 1)
    maps = [align_layer(probe, fine, name, grid)[0, ..., 0].long() for name in ("aligned", "official")]
    per_fine, per_coarse = fine // grid, coarse // grid
    gy, gx = divmod(region, grid)

    def letter(index: int) -> str:
        y, x = divmod(index, coarse)
        return chr(ord("A") + (y - gy * per_coarse) * per_coarse + (x - gx * per_coarse))

    rows = []
    for y in range(per_fine):
        row: dict[str, str] = {"fine row": str(y)}
        for x in range(per_fine):
            ours, theirs = (letter(int(m[gy * per_fine + y, gx * per_fine + x])) for m in maps)
            row[f"column {x}"] = f"{ours} / {theirs}" if ours == theirs else f"{ours} / **{theirs}**"
        rows.append(row)
    return markdown_table(rows)


def example_groups(scores: Tensor, labels: Tensor, per_group: int = 3) -> dict[str, list[int]]:
    """Test images worth looking at, by group: the highest-scored defects ("best detections"),
    the highest-scored good images ("likeliest false alarms": the first to be flagged as the
    threshold drops) and the lowest-scored defects ("worst misses"); indices, best first, no
    image twice."""
    order = torch.argsort(scores, descending=True).tolist()
    defects = [i for i in order if labels[i] == 1]
    goods = [i for i in order if labels[i] == 0]
    groups = {"best detections": defects[:per_group], "likeliest false alarms": goods[:per_group]}
    taken = set(groups["best detections"])
    groups["worst misses"] = [i for i in defects[::-1] if i not in taken][:per_group]
    return groups


def threshold_table(heldout: np.ndarray, raw: np.ndarray, labels: np.ndarray,
                    rates: tuple[float, ...]) -> list[dict[str, float | None]]:
    """Per target false-alarm rate: the threshold the calibration rule gives (the ``1 - rate``
    quantile of the held-out normal scores ``heldout``, training data only), the false alarms it
    gives on those scores, and what it gives on the test set (``raw`` scores, ``labels`` 1 for a
    defect): the good images flagged and the defects missed (None without such images)."""
    rows = []
    good, bad = raw[labels == 0], raw[labels == 1]
    for rate in rates:
        threshold = float(np.quantile(heldout, 1 - rate))
        rows.append({"target false alarms": rate, "threshold": round(threshold, 3),
                     "held-out false alarms": round(float((heldout >= threshold).mean()), 3),
                     "test false alarms": round(float((good >= threshold).mean()), 3) if good.size else None,
                     "test misses": round(float((bad < threshold).mean()), 3) if bad.size else None})
    return rows


def _short(value: object) -> str:
    """A sidecar value in a table cell: floats to 4 significant digits, lists in brackets."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def sidecar_rows(sidecar: dict[str, Any], sections: tuple[str, ...] = ("input", "batch_size", "preprocessing",
                                                                      "outputs", "calibration", "versions"),
                 skip: tuple[str, ...] = ("rule",)) -> list[dict[str, str]]:
    """The ``sections`` of an export's sidecar (``fapm_export.json``) as table rows, one per
    entry (``section``, ``entry``, ``value``) but those named in ``skip``; an output's type and
    shape in one cell, the versions in one row."""
    rows = []
    for section in sections:
        content = sidecar.get(section)
        if section == "versions" and isinstance(content, dict):
            rows.append({"section": section, "entry": "", "value": ", ".join(f"{k} {v}" for k, v in content.items())})
        elif isinstance(content, dict):
            for entry, value in content.items():
                if entry in skip:
                    continue
                if isinstance(value, dict) and {"shape", "dtype"} <= set(value):
                    value = f"{value['dtype']} {_short(value['shape'])}"
                rows.append({"section": section, "entry": entry, "value": _short(value)})
        elif content is not None:
            rows.append({"section": section, "entry": "", "value": _short(content)})
    return rows


def graph_io_rows(session: Any, sidecar: dict[str, Any]) -> list[dict[str, str]]:
    """The inputs and outputs of an onnxruntime ``session``: name, type and shape. A dimension the
    ONNX file leaves symbolic under a traced name (``Gatherpatch_scores_dim_1``) is shown as the
    sidecar states it; ``batch`` stays ``batch``."""
    declared = {**{sidecar["input"]["name"]: sidecar["input"]}, **sidecar.get("outputs", {})}
    rows = []
    for kind, nodes in (("input", session.get_inputs()), ("output", session.get_outputs())):
        for node in nodes:
            known = declared.get(node.name, {}).get("shape", [])
            shape = [dim if isinstance(dim, int) or dim == "batch" or i >= len(known) else known[i]
                     for i, dim in enumerate(node.shape)]
            rows.append({"": kind, "name": node.name, "type": node.type, "shape": _short(shape)})
    return rows
