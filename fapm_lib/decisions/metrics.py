"""Anomaly detection metrics: image AUROC, pixel AUROC, pixel F1-max and pixel AUPRO.

All functions take tensors on any device, return python floats in [0, 1] and raise
:class:`~fapm_lib.errors.FAPMError` with a one-line message on malformed input.

AUROC and F1-max use torchmetrics' exact (threshold-free) curves. torchmetrics applies a
sigmoid to scores outside [0, 1]; in float32 that saturates large anomaly distances into
ties, so scores are first min-max rescaled in float64, which keeps their order exactly.

The exact pixel curves hold about 66 bytes per pixel while they run (measured: 1.3 GB for 21
megapixels of maps). :func:`compute_metrics` therefore reads at most
:data:`PIXEL_METRICS_MAX_PIXELS` pixels: a larger test set (native resolution, large frames) is
scored on its maps and masks reduced by the smallest whole factor ``f`` that fits
(:func:`pixel_metrics_downscale`), each ``f x f`` block of a map averaged and of a mask counted
as defect when any of its pixels is (so no defect region vanishes).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_precision_recall_curve

from ..errors import FAPMError

__all__ = ["image_auroc", "pixel_auroc", "pixel_f1_max", "pixel_aupro", "compute_metrics", "scores_to_unit",
           "pixel_metrics_downscale", "downscale_maps_and_masks", "PIXEL_METRICS_MAX_PIXELS"]

# 8-connectivity, as in the MVTec AD evaluation code (scipy.ndimage.label, 3x3 ones).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)
#: The most map pixels the pixel metrics read at their own geometry (about 9 GB while they run);
#: MVTec AD's test sets fit it at 512 x 512 and most of them at their full size.
PIXEL_METRICS_MAX_PIXELS = 2**27


def scores_to_unit(scores: Tensor) -> Tensor:
    """Finite scores of any shape -> flat float64 CPU tensor in [0, 1], order preserved."""
    flat = scores.detach().to("cpu", torch.float64).reshape(-1)
    if not torch.isfinite(flat).all():
        raise FAPMError("scores contain NaN or infinite values")
    low, high = flat.min(), flat.max()
    return (flat - low) / (high - low) if high > low else torch.zeros_like(flat)


def _binary_targets(labels: Tensor, name: str) -> Tensor:
    """{0,1} or bool tensor of any shape -> flat int64 CPU tensor."""
    flat = labels.detach().to("cpu").reshape(-1)
    if not ((flat == 0) | (flat == 1)).all():
        raise FAPMError(f"{name} must contain only 0 and 1")
    return flat.long()


def _has_both_classes(target: Tensor) -> bool:
    """True when a flat {0,1} tensor holds at least one 0 and one 1."""
    positives = int(target.sum())
    return 0 < positives < target.numel()


def _check_pixel_shapes(maps: Tensor, masks: Tensor) -> None:
    """Require maps and masks of the same [N,H,W] shape."""
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise FAPMError(
            f"maps and masks must both be [N,H,W], got {tuple(maps.shape)} and {tuple(masks.shape)}"
        )


def _check_image_shapes(scores: Tensor, labels: Tensor) -> None:
    """Require scores and labels of the same [N] shape."""
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise FAPMError(
            f"scores and labels must both be [N], "
            f"got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )


def _auroc(scores: Tensor, target: Tensor, what: str) -> float:
    """Exact AUROC of flat ``scores`` against flat {0,1} ``target``."""
    if not _has_both_classes(target):
        raise FAPMError(f"{what} needs both normal and anomalous samples")
    return float(binary_auroc(scores_to_unit(scores), target, validate_args=False))


def image_auroc(scores: Tensor, labels: Tensor) -> float:
    """AUROC of image scores [N] (float) against image labels [N] ({0,1}, 1 = anomalous)."""
    _check_image_shapes(scores, labels)
    return _auroc(scores, _binary_targets(labels, "labels"), "image AUROC")


def pixel_auroc(maps: Tensor, masks: Tensor) -> float:
    """AUROC over all pixels of anomaly maps [N,H,W] against masks [N,H,W] (bool or {0,1})."""
    _check_pixel_shapes(maps, masks)
    return _auroc(maps, _binary_targets(masks, "masks"), "pixel AUROC")


def pixel_f1_max(maps: Tensor, masks: Tensor) -> float:
    """Best pixel F1 over all thresholds (exact PR curve); maps and masks [N,H,W]."""
    _check_pixel_shapes(maps, masks)
    target = _binary_targets(masks, "masks")
    if not _has_both_classes(target):
        raise FAPMError("pixel F1-max needs both normal and anomalous pixels")
    precision, recall, _ = binary_precision_recall_curve(
        scores_to_unit(maps), target, validate_args=False
    )
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return float(f1.max())


def _region_weights(masks: np.ndarray) -> np.ndarray:
    """Masks [N,H,W] bool -> weight per anomalous pixel (mask order) so that every
    8-connected region sums to 1 / number_of_regions."""
    region_ids = []
    offset = 0
    for mask in masks:
        labelled, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        region_ids.append(labelled[mask] + offset - 1)
        offset += count
    ids = np.concatenate(region_ids)
    sizes = np.bincount(ids, minlength=offset)
    return 1.0 / (sizes[ids] * offset)


def _distinct_thresholds(normal_sorted: np.ndarray, fpr_limit: float) -> np.ndarray:
    """Distinct normal scores, descending, down to the first whose FPR reaches ``fpr_limit``."""
    n = normal_sorted.size
    lowest = normal_sorted[n - max(1, int(np.ceil(fpr_limit * n)))]
    return np.unique(normal_sorted[np.searchsorted(normal_sorted, lowest) :])[::-1]


def pixel_aupro(maps: Tensor, masks: Tensor, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit``, in [0, 1].

    maps [N,H,W] float, masks [N,H,W] bool/{0,1}. Regions are the 8-connected components
    of each mask (MVTec AD convention). FPR(t) is the fraction of all normal pixels with
    score >= t; PRO(t) the mean over regions of the fraction of the region's pixels with
    score >= t. The area under PRO over FPR in [0, fpr_limit] (trapezoids, the point at
    exactly ``fpr_limit`` interpolated) is divided by ``fpr_limit``.

    The curve is exact, as if every distinct score were a threshold, without looping over
    thresholds: only normal scores move the FPR, so each distinct normal score t gives one
    sloped segment, from (FPR just above t, PRO(> t)) to (FPR(t), PRO(>= t)), and vertical
    steps (zero area) join them. PRO is a weighted count over sorted anomalous scores, each
    pixel weighted 1 / (region size * region count). Memory is O(pixels).
    """
    _check_pixel_shapes(maps, masks)
    if not 0.0 < fpr_limit <= 1.0:
        raise FAPMError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    target = _binary_targets(masks, "masks")
    if not _has_both_classes(target):
        raise FAPMError("pixel AUPRO needs both normal and anomalous pixels")
    mask_np = target.numpy().astype(bool).reshape(masks.shape)
    score_np = scores_to_unit(maps).numpy().reshape(masks.shape)

    normal_sorted = np.sort(score_np[~mask_np])
    thresholds = _distinct_thresholds(normal_sorted, fpr_limit)
    fpr = 1.0 - np.searchsorted(normal_sorted, thresholds, side="left") / normal_sorted.size

    anomalous = score_np[mask_np]
    order = np.argsort(anomalous, kind="stable")
    weights = _region_weights(mask_np)[order]
    pro_from = np.append(np.cumsum(weights[::-1])[::-1], 0.0)  # [i] = PRO of sorted pixels i..
    anomalous_sorted = anomalous[order]
    pro_above = pro_from[np.searchsorted(anomalous_sorted, thresholds, side="right")]
    pro_at = pro_from[np.searchsorted(anomalous_sorted, thresholds, side="left")]
    return _segments_area(fpr, pro_above, pro_at, fpr_limit)


def _segments_area(fpr: np.ndarray, start: np.ndarray, end: np.ndarray, fpr_limit: float) -> float:
    """Area on [0, fpr_limit] / fpr_limit under segments (fpr[j-1], start[j]) -> (fpr[j], end[j]),
    with fpr[-1] = 0 and fpr strictly increasing; the segment crossing fpr_limit is cut there."""
    left = np.append(0.0, fpr[:-1])
    keep = left < fpr_limit
    left, right, start, end = left[keep], fpr[keep], start[keep], end[keep]
    cut = np.minimum(right, fpr_limit)
    end_at_cut = start + (end - start) * (cut - left) / (right - left)
    area = np.sum((cut - left) * (start + end_at_cut) / 2)
    return float(np.clip(area / fpr_limit, 0.0, 1.0))


def pixel_metrics_downscale(shape: tuple[int, ...], max_pixels: int | None = None) -> int:
    """The whole factor by which maps of ``shape`` [N, H, W] are reduced for the pixel metrics:
    1 (their own geometry) up to ``max_pixels`` pixels (default :data:`PIXEL_METRICS_MAX_PIXELS`),
    else the smallest that fits."""
    max_pixels = PIXEL_METRICS_MAX_PIXELS if max_pixels is None else max_pixels
    total = math.prod(int(v) for v in shape)
    return 1 if total <= max_pixels else math.ceil(math.sqrt(total / max_pixels))


def downscale_maps_and_masks(maps: Tensor, masks: Tensor, factor: int,
                             chunk: int = 16) -> tuple[Tensor, Tensor]:
    """``[N, H, W]`` maps and masks -> ``[N, ceil(H / f), ceil(W / f)]``: each ``f x f`` block of a
    map averaged (its pixels inside the image), of a mask True when any of its pixels is;
    ``chunk`` images at a time, so no float copy of all masks is made."""
    if factor == 1:
        return maps, masks
    out_maps, out_masks = [], []
    for m, k in zip(maps.split(chunk), masks.split(chunk)):
        if not ((k == 0) | (k == 1)).all():
            raise FAPMError("masks must contain only 0 and 1")
        out_maps.append(F.avg_pool2d(m[:, None].float(), factor, ceil_mode=True)[:, 0])
        out_masks.append(F.max_pool2d(k[:, None].float(), factor, ceil_mode=True)[:, 0] > 0.5)
    return torch.cat(out_maps), torch.cat(out_masks)


def compute_metrics(
    scores: Tensor, labels: Tensor, maps: Tensor, masks: Tensor | None,
    max_pixels: int | None = None,
) -> dict[str, float | None]:
    """All metrics in one dict: image_auroc, pixel_auroc, pixel_f1_max, pixel_aupro.

    scores/labels [N]; maps/masks [N,H,W]. image_auroc is None when labels hold a single
    class; the pixel metrics are None when masks is None or holds a single class (e.g.
    no anomalous pixel). Maps of more than ``max_pixels`` pixels are scored reduced by
    :func:`pixel_metrics_downscale` (see the module).
    """
    result: dict[str, float | None] = dict.fromkeys(
        ("image_auroc", "pixel_auroc", "pixel_f1_max", "pixel_aupro")
    )
    _check_image_shapes(scores, labels)
    if _has_both_classes(_binary_targets(labels, "labels")):
        result["image_auroc"] = image_auroc(scores, labels)
    if masks is not None:
        _check_pixel_shapes(maps, masks)
        maps, masks = downscale_maps_and_masks(maps, masks, pixel_metrics_downscale(maps.shape, max_pixels))
        if _has_both_classes(_binary_targets(masks, "masks")):
            result["pixel_auroc"] = pixel_auroc(maps, masks)
            result["pixel_f1_max"] = pixel_f1_max(maps, masks)
            result["pixel_aupro"] = pixel_aupro(maps, masks)
    return result
