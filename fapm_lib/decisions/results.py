"""Decisions for single images and folders: raw and normalised score, OK/NG, map and mask at
the input's own size.

>>> result = model.predict_image("part.png")      # a path, a PIL image or a numpy array
>>> result.decision, result.score, result.raw_score
('NG', 0.93, 31.2)
>>> result.anomaly_map.shape == result.mask.shape == (height, width)

At native resolution (the default) the model sees the whole image (resized to its canvas when
the input's size differs: same aspect only), and its map is brought back onto the input's own
pixels. With the paper's protocol it sees the centre crop of its transform (resize the shorter
side to ``resize``, crop ``crop_size``); pixels outside that crop, which the model did not see,
get 0 in the map and False in the mask (``box`` says which area was analysed).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..data.folders import list_images
from ..data.images import ImageInput, as_pil
from ..data.transform import Transform
from ..errors import ConfigError, DataError
from .calibration import Calibration, manual
from .detector_protocol import ScoringDetector
from .nearest_patch import Explanation, explain_images

UNCALIBRATED = "uncalibrated"


@dataclass
class Result:
    """One image's prediction. ``anomaly_map [H, W]`` float32 in raw units and ``mask [H, W]``
    bool at the input's size; ``score`` (normalised, 0.5 at the threshold), ``mask`` and an
    ``OK``/``NG`` ``decision`` need a calibration (else None, None and ``"uncalibrated"``)."""

    raw_score: float
    score: float | None
    decision: str
    anomaly_map: np.ndarray
    mask: np.ndarray | None
    box: tuple[float, float, float, float]  # analysed area: left, top, right, bottom (input pixels)
    path: str | None = None
    calibration: Calibration | None = None
    #: computes the explanation on demand (:meth:`explain`); set by :func:`predict_images`
    explainer: Callable[[], Explanation] | None = field(default=None, repr=False, compare=False)

    def explain(self) -> Explanation:
        """The nearest normal patch at this image's most anomalous place: test crop, nearest
        training crop, distance and region per layer (:mod:`fapm_lib.decisions.nearest_patch`).
        Computed on first call (one more pass of this image); ConfigError (one line) for a model
        that cannot explain."""
        if self.explainer is None:
            raise ConfigError("this result has no model to explain it with; use model.predict_image or predict_folder")
        return self.explainer()

    def score_map(self) -> np.ndarray | None:
        """``[H, W]`` normalised pixel scores in (0, 1), 0.5 at the pixel threshold (0 outside ``box``)."""
        if self.calibration is None:
            return None
        norm = self.calibration.pixel_score(torch.from_numpy(self.anomaly_map)).numpy()
        return np.where(self._inside(), norm, 0.0).astype(np.float32)

    def _inside(self) -> np.ndarray:
        h, w = self.anomaly_map.shape
        left, top, right, bottom = self.box
        xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
        return ((ys >= top) & (ys <= bottom))[:, None] & ((xs >= left) & (xs <= right))[None, :]


def map_to_input(amap: Tensor, size: tuple[int, int], transform: Transform) -> tuple[np.ndarray, tuple[float, ...]]:
    """A map on the model's view (``[H', W']``) -> ``[H, W]`` on the input of ``size`` (width,
    height), bilinear, 0 outside the analysed area; and that area (left, top, right, bottom)."""
    width, height = size
    place = transform.placement(size)
    (rw, rh), (left, top), (vw, vh) = place.resized, place.offset, place.view
    if (rw, rh) == (width, height) == (vw, vh):  # the view is the input itself (native, its own size)
        return amap.cpu().numpy().astype(np.float32), (0.0, 0.0, float(width), float(height))
    gx = ((torch.arange(width) + 0.5) * rw / width - left) / vw * 2 - 1  # view coordinates in [-1, 1]
    gy = ((torch.arange(height) + 0.5) * rh / height - top) / vh * 2 - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None].to(amap.dtype)  # [1, H, W, 2]
    out = F.grid_sample(amap[None, None].cpu(), grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
    inside = (gy.abs() <= 1)[:, None] & (gx.abs() <= 1)[None, :]
    box = transform.box_on_input((0, 0, vw, vh), size)
    return torch.where(inside, out, torch.zeros(())).numpy().astype(np.float32), box


def resolve_calibration(model: ScoringDetector, threshold: float | None = None,
                        pixel_threshold: float | None = None) -> Calibration | None:
    """The model's calibration, with a manual image and/or pixel threshold (raw units) if given."""
    if threshold is None and pixel_threshold is None:
        return model.calibration
    return manual(model.calibration, threshold, pixel_threshold, model.config.image_score, model.config.search_k)


def predict_images(model: ScoringDetector, images: Sequence[ImageInput], threshold: float | None = None,
                   pixel_threshold: float | None = None) -> list[Result]:
    """Score images of any sizes (batched by ``model.config.batch_size``) -> one :class:`Result` each."""
    calibration = resolve_calibration(model, threshold, pixel_threshold)
    transform, results = model.transform, []
    for start in range(0, len(images), model.config.batch_size):
        chunk = list(images[start : start + model.config.batch_size])
        pils = [as_pil(x) for x in chunk]
        batch = torch.stack([image_tensor(transform, p, x) for p, x in zip(pils, chunk)]).to(model.device)
        pred = model.predict(batch)
        for j, (item, pil) in enumerate(zip(chunk, pils)):
            amap, box = map_to_input(pred.anomaly_map[j].float(), pil.size, transform)
            raw = float(pred.pred_score[j])
            path = str(item) if isinstance(item, (str, os.PathLike)) else None
            results.append(decide(raw, amap, box, calibration, path))
            results[-1].explainer = functools.partial(_explain_one, model, item)
    return results


def _explain_one(model: ScoringDetector, image: ImageInput) -> Explanation:
    return explain_images(model, [image])[0]


def decide(raw: float, amap: np.ndarray, box: tuple[float, ...], calibration: Calibration | None,
           path: str | None = None) -> Result:
    """A :class:`Result` from a raw score and a map at the input's size."""
    if calibration is None:
        return Result(raw, None, UNCALIBRATED, amap, None, box, path)
    result = Result(raw, float(calibration.score(raw)), calibration.decide(raw), amap, None, box, path, calibration)
    result.mask = (amap >= calibration.pixel_threshold) & result._inside()
    return result


def predict_folder(model: ScoringDetector, folder: str | os.PathLike, threshold: float | None = None,
                   pixel_threshold: float | None = None) -> list[Result]:
    """Every image under ``folder`` -> list of :class:`Result` (``path`` set)."""
    return predict_images(model, list_images(folder), threshold, pixel_threshold)


def image_tensor(transform: Transform, pil: Image.Image, item: ImageInput) -> Tensor:
    """``transform.image(pil)``, its one-line DataError naming the file when ``item`` is a path."""
    try:
        return transform.image(pil)
    except DataError as exc:
        name = str(item) if isinstance(item, (str, os.PathLike)) else "image"
        raise DataError(f"{name}: {exc}") from None
