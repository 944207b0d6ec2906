"""Ablations of FAPM's design choices, measured from cached features.

Each category's backbone features are extracted once (train and test); every variant then
refits its memories from those maps (``FAPM.fit_maps``) and rescores the cached test maps, so
a whole table costs a few coreset runs and searches, not one backbone pass per row.

The variants (one change each from the defaults):

- ``official fusion``: layer-3 distances brought onto the layer-2 grid as the official code
  does (:func:`~fapm_lib.method.scoring.upsample_official`), instead of the 2x2 tiling
  (:func:`~fapm_lib.method.scoring.upsample_nearest`);
- ``reweighted score``: the official re-weighted image score instead of ``max``;
- ``projected coreset``: greedy k-center selects on a random projection of the features;
- ``fixed sampling``: one ratio for every region (no near/far rule);
- ``grid 1`` / ``grid 14``: one region per layer (PatchCore-like banks per layer) or 14 x 14 regions.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..config import FAPMConfig
from ..data.mvtec import MVTecDataset
from ..decisions.metrics import image_auroc, pixel_auroc
from ..detectors.fapm import FAPM
from ..errors import ConfigError
from ..method.backbone import FeatureExtractor
from ..method.scoring import ALIGNMENTS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: the layer alignments of the ablation (:data:`fapm_lib.method.scoring.ALIGNMENTS`)
FUSIONS = ALIGNMENTS


@dataclass
class CategoryFeatures:
    """Cached aggregated maps of one category: per layer ``train_maps [N, C, h, w]`` and
    ``test_maps [T, C, h, w]``, ``labels [T]``, ``masks [T, S, S]`` (None without ground truth)."""

    name: str
    train_maps: list[Tensor]
    test_maps: list[Tensor]
    labels: Tensor
    masks: Tensor | None
    extract_seconds: float = 0.0


def extract_category(model: FAPM, data_root: str | Path, category: str) -> CategoryFeatures:
    """Run ``model``'s backbone once over a category's train and test split and keep the
    aggregated maps on the CPU."""
    start = time.perf_counter()
    train = MVTecDataset(data_root, category, "train", model.transform)
    test = MVTecDataset(data_root, category, "test", model.transform)
    train_maps = model.extract(train, progress=False)
    test_maps = model.extract(test, progress=False)
    labels = torch.tensor([s.label for s in test.samples])
    masks = torch.stack([test[i]["mask"] for i in range(len(test))]) if test.has_masks else None
    return CategoryFeatures(category, train_maps, test_maps, labels, masks, time.perf_counter() - start)


@dataclass(frozen=True)
class Variant:
    """One row of the table: FAPMConfig ``changes`` from the base settings, and the fusion."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    fusion: str = "aligned"


def default_variants(projection: int = 16) -> list[Variant]:
    """The defaults, then one change at a time. ``projection``: the random-projection dimension
    of the projected coreset (it must be smaller than a layer's channels to act: 40 and 112 with
    ``tf_efficientnet_lite0``, so PatchCore's 128 would leave lite0's features unchanged)."""
    return [
        Variant("FAPM defaults"),
        Variant("official fusion", fusion="official"),
        Variant("reweighted score", {"image_score": "reweighted"}),
        Variant(f"projected coreset ({projection}-d)", {"coreset_projection": projection}),
        Variant("fixed sampling", {"sampling": "fixed"}),
        Variant("grid 1", {"grid": 1}),
        Variant("grid 14", {"grid": 14}),
    ]


#: the measured columns of a row
COLUMNS = ("image AUROC", "pixel AUROC", "search ms/image", "memory MB", "coreset s")

#: settings that change the memory itself (the others act at scoring time only)
MEMORY_KEYS = ("grid", "sampling", "coreset_ratio", "adaptive_multiplier", "coreset_projection", "coreset_method",
               "coreset_cell_size", "seed")


@torch.inference_mode()
def score_variant(model: FAPM, maps: list[Tensor], fusion: str, batch_size: int = 8) -> tuple[Tensor, Tensor, float]:
    """Anomaly maps ``[T, S, S]``, image scores ``[T]`` and the search's wall seconds (k-NN and
    fusion) of one pass over cached test maps, ``batch_size`` images at a time, through the
    model's own module with its layer alignment set by ``fusion`` (``aligned``: the library's
    2x2 tiling; ``official``: the official code's mapping)."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r}: expected one of {', '.join(FUSIONS)}")
    module = model.model
    module.alignment, amaps, scores, seconds = fusion, [], [], 0.0
    try:
        for start in range(0, maps[0].shape[0], batch_size):
            batch = [m[start : start + batch_size].to(model.device) for m in maps]
            began = time.perf_counter()
            knn = module.search(batch)
            seconds += time.perf_counter() - began
            prediction = module.postprocess(knn)
            amaps.append(prediction.anomaly_map.cpu())
            scores.append(prediction.pred_score.cpu())
    finally:
        module.alignment = "aligned"
    return torch.cat(amaps), torch.cat(scores), seconds


def run_ablation(features: CategoryFeatures, extractor: FeatureExtractor, base: FAPMConfig | None = None,
                 variants: list[Variant] | None = None, repeats: int = 3, batch_size: int = 8) -> list[dict[str, Any]]:
    """One row per variant: image AUROC, pixel AUROC (None without masks), search ms per test
    image (median of ``repeats`` timed passes), memory MB and coreset seconds. Variants that
    differ only at scoring time share one fit. A variant whose settings cannot be fitted on this
    data (a ConfigError, e.g. ``k`` above the smallest bank) gets empty values and the reason in
    ``refused``; the other rows have ``refused == ""``."""
    base = base or FAPMConfig(backbone=extractor.info.name, resize=256, crop_size=224)  # the paper's protocol
    variants = variants if variants is not None else default_variants()
    fitted: dict[tuple, FAPM] = {}
    rows = []
    n_test = features.test_maps[0].shape[0]
    for variant in variants:
        if variant.fusion not in FUSIONS:
            raise ValueError(f"variant {variant.name!r}: fusion={variant.fusion!r}, "
                             f"expected one of {', '.join(FUSIONS)}")
        config = base.replace(**variant.changes)
        key = tuple(getattr(config, name) for name in MEMORY_KEYS)
        model = FAPM(config, extractor=extractor)
        row: dict[str, Any] = {"category": features.name, "variant": variant.name}
        if key not in fitted:
            try:
                fitted[key] = model.fit_maps(features.train_maps)
            except ConfigError as exc:  # e.g. k larger than a 14 x 14 grid's banks on few images
                rows.append({**row, **dict.fromkeys(COLUMNS), "refused": str(exc)})
                continue
        else:  # the same memory, scored differently
            model.feature_sizes = fitted[key].feature_sizes
            model.set_memories(fitted[key].memories)
            model.fit_stats = dict(fitted[key].fit_stats)
        amaps, scores, seconds = score_variant(model, features.test_maps, variant.fusion, batch_size)
        timings = [seconds] + [score_variant(model, features.test_maps, variant.fusion, batch_size)[2]
                               for _ in range(repeats - 1)]
        rows.append({
            **row,
            "image AUROC": image_auroc(scores, features.labels),
            "pixel AUROC": None if features.masks is None else pixel_auroc(amaps, features.masks),
            "search ms/image": 1000.0 * statistics.median(timings) / n_test,
            "memory MB": model.memory_size()["megabytes"],
            "coreset s": model.fit_stats.get("coreset_seconds"),
            "refused": "",
        })
    return rows


def summary_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant, the mean of each numeric column over the categories in ``rows``."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    table = []
    for name, group in by_variant.items():
        entry: dict[str, Any] = {"variant": name, "categories": sum(1 for r in group if not r.get("refused"))}
        for column in COLUMNS[:4]:
            values = [r[column] for r in group if r.get(column) is not None]
            entry[column] = statistics.fmean(values) if values else None
        table.append(entry)
    return table


def shown_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as the notebook shows them: category, variant and the measured columns, the
    ``refused`` column only when a row was refused, the ``data`` column only for several kinds."""
    kinds = {row.get("data") for row in rows}
    keep = ["data"] * (len(kinds) > 1) + ["category", "variant", *COLUMNS]
    keep += ["refused"] * any(row.get("refused") for row in rows)
    return [{key: row.get(key) for key in keep} for row in rows]


def ablation_figure(rows: list[dict[str, Any]], variants: list[Variant]) -> Figure:
    """Each variant against the defaults (the first variant), per category (one colour each):
    the change of image and pixel AUROC (points) and the ratio of search time and memory; 2 x 2
    panels, the variants on the vertical axis."""
    from .plots import panels

    metrics = ("image AUROC", "pixel AUROC", "search ms/image", "memory MB")
    names = list(dict.fromkeys(row["category"] for row in rows))
    fig, axes = panels(4, ncols=2, panel_height=3.6, sharey=True)
    for ax, metric in zip(axes, metrics):
        is_auroc = "AUROC" in metric
        for name in names:
            mine = {row["variant"]: row for row in rows if row["category"] == name}
            reference = mine[variants[0].name][metric]
            if reference is None:
                continue
            points = [(v.name, mine[v.name][metric]) for v in variants if mine[v.name][metric] is not None]
            values = [100 * (x - reference) if is_auroc else x / reference for _, x in points]
            ax.plot(values, [v for v, _ in points], "o", label=name, alpha=0.8)
        ax.axvline(0.0 if is_auroc else 1.0, color="gray", ls=":")
        ax.set_title(f"{metric}: " + ("change vs defaults, points" if is_auroc else "ratio to defaults"))
        if metric == "search ms/image":
            ax.set_xscale("log")
    axes[0].invert_yaxis()
    axes[-1].legend(fontsize=7, loc="lower right")
    return fig
