"""Held-out predictions of a bounded fit (``fit --max-memory``) from the distances its region
pass wrote (:mod:`fapm_lib.scale.pipeline`: per layer ``[R, N * s*s, k]``, every training row
against the memory of the folds without its image): merged a batch of images at a time into
anomaly maps, whose pixels go to a file for exact quantiles (:mod:`fapm_lib.decisions.quantiles`),
and the image neighbours. The same steps as :func:`~fapm_lib.decisions.heldout.heldout_predictions`
on the same distances, so the thresholds equal the in-RAM calibration's."""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import FAPMConfig
from ..method.fapm_model import fuse_region_distances
from ..method.geometry import ModelGeometry
from ..method.regions import merge_regions
from ..method.scoring import postprocess, top_neighbours, valid_knn
from ..scale.pipeline import RegionFit
from .calibration import Calibration
from .heldout import HeldOut, from_heldout
from .quantiles import ValueFile

#: Images merged at a time (their distances, fused map and anomaly maps: about 0.5 MB each).
MERGE_IMAGES = 64


@torch.inference_mode()
def heldout_from_knn(fit: RegionFit, geometry: ModelGeometry, config: FAPMConfig, workdir: Path,
                     progress: bool = False) -> HeldOut:
    """Held-out neighbours ``[N, k]`` and the anomaly maps' pixels (a :class:`ValueFile` under
    ``workdir``) from ``fit.knn``."""
    assert fit.knn is not None
    n = fit.knn[0].n_images
    neighbours = torch.empty(n, fit.k)
    values = ValueFile(Path(workdir) / "heldout_maps.f32")
    with tqdm(total=n, desc="calibration maps", unit="image", disable=not progress, leave=False) as bar:
        for images in torch.arange(n).split(MERGE_IMAGES):
            per_layer = [merge_regions(store.read(range(store.n_regions), images), geometry.grid, h, w)
                         for store, (h, w) in zip(fit.knn, geometry.feature_sizes)]
            knn = fuse_region_distances(per_layer, geometry.grid)
            prediction = postprocess(knn, geometry.canvas, config.blur_sigma, config.image_score, geometry.padded)
            values.append(prediction.anomaly_map)
            neighbours[images] = top_neighbours(valid_knn(knn, geometry.canvas, geometry.padded))
            bar.update(len(images))
    return HeldOut(neighbours, values, fit.folds)


def calibrate_from_knn(fit: RegionFit, geometry: ModelGeometry, config: FAPMConfig, workdir: Path,
                       progress: bool = False) -> Calibration | None:
    """The k-fold calibration of a bounded fit; None without folds (``calibration_folds`` 0, or
    fewer than 2 images)."""
    if not fit.folds:
        return None
    held = heldout_from_knn(fit, geometry, config, workdir, progress)
    try:
        return from_heldout(held, config.image_score, config.search_k, config.false_alarm_rate)
    finally:
        held.maps.close()
