"""Why a part was flagged: at its most anomalous place, the nearest normal patch in memory.

Every memory vector records its source (:class:`~fapm_lib.method.memory.BankGroup`: its row
among its region's training vectors, ``image * s*s + cell``) and the model file the training
image paths, so a prediction can show *which* training image and *where* its nearest normal
patch came from:

1. the position: the largest fused 1-NN distance on the layer-2 grid (``patch_scores``, what the
   ``max`` image score reads), ``(y, x)`` on the ``28 x 28`` grid of a 224 input;
2. per layer, the cell above it (layer 3: ``(y // 2, x // 2)``, the 2x2 tiling the fusion
   uses), its region, the nearest vector of that region's bank (:meth:`FAPMModel.nearest_sources
   <fapm_lib.method.fapm_model.FAPMModel.nearest_sources>`, the search kernel with the index kept),
   the distance (the layers' distances add up to the fused score there) and the source: training
   image ``row // (s*s)``, cell ``row % (s*s)`` of the same region;
3. the crops: the ``pool x pool`` cells around each cell (3 x 3: what the feature averaged;
   24 px at stride 8, 48 px at stride 16) in the model's 224 view of the test image and of the
   training image, side by side; and the boxes of the cells in each image's own pixels.

Refused with one line for a model file without sources (format version 1) or without training
image paths (fitted from tensors, or a file of format version 1 or 2), and for other models.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.images import ImageInput, as_pil, load_image
from ..errors import ConfigError
from ..method.fapm_model import FAPMModel
from .detector_protocol import ScoringDetector

Box = tuple[float, float, float, float]  # left, top, right, bottom


@dataclass
class LayerMatch:
    """One layer's nearest normal vector at the explained position. Cells are ``(y, x)`` on the
    layer's feature map; boxes ``(left, top, right, bottom)``: ``*_box`` in the model's ``S x S``
    view, ``*_box_input`` in the image's own pixels; crops uint8 ``[c, c, 3]`` of that view."""

    layer: int
    stride: int
    region: int
    region_yx: tuple[int, int]
    distance: float
    test_cell: tuple[int, int]
    train_cell: tuple[int, int]
    train_index: int
    train_image: str
    test_box: Box
    train_box: Box
    test_box_input: Box
    train_box_input: Box
    test_crop: np.ndarray = field(repr=False)
    train_crop: np.ndarray = field(repr=False)
    train_view: np.ndarray = field(repr=False)  # the training image as the model saw it, [S, S, 3]


@dataclass
class Explanation:
    """The explained position ``(y, x)`` on the layer-2 grid, the fused 1-NN score there
    (``patch_score``, the sum of the layers' distances), the image's raw score, one
    :class:`LayerMatch` per layer, and the test image as the model saw it (``test_view [S, S, 3]``)."""

    path: str | None
    raw_score: float
    position: tuple[int, int]
    patch_score: float
    layers: list[LayerMatch]
    test_view: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready, without the pictures."""
        out = {k: v for k, v in asdict(self).items() if k != "test_view"}
        for layer in out["layers"]:
            for picture in ("test_crop", "train_crop", "train_view"):
                layer.pop(picture)
        return out


def check_explainable(model: ScoringDetector) -> FAPMModel:
    """The fitted FAPM module of ``model``; ConfigError (one line) when it cannot explain."""
    fapm = getattr(model, "model", None)
    if getattr(model, "kind", None) != "fapm" or not isinstance(fapm, FAPMModel):
        raise ConfigError("explanations need a fitted FAPM model in PyTorch (a .safetensors model file), "
                          f"not {type(model).__name__}")
    if any(g.sources is None for m in fapm.memories for g in m.groups):
        raise ConfigError("this model file does not record where its memory vectors came from (format version 1); "
                          "refit it to explain predictions")
    if model.train_images is None:
        raise ConfigError("this model does not record its training image paths (fitted from tensors, or a model "
                          "file of format version 1 or 2); refit it from image files to explain predictions")
    return fapm


def _crop(view: np.ndarray, cell: tuple[int, int], stride: int, pool: int) -> tuple[np.ndarray, Box]:
    """The ``pool x pool`` cells around ``cell`` (shifted inside the view ``[H, W, 3]``), and the
    cell's box (cut to the view: a cell of the padding holds the view's last pixels)."""
    side, (height, width) = pool * stride, view.shape[:2]
    y, x = cell
    top = int(max(min(y * stride + stride // 2 - side // 2, height - side), 0))
    left = int(max(min(x * stride + stride // 2 - side // 2, width - side), 0))
    box = (float(min(x * stride, width - 1)), float(min(y * stride, height - 1)),
           float(min((x + 1) * stride, width)), float(min((y + 1) * stride, height)))
    return view[top : top + side, left : left + side].copy(), box


@torch.inference_mode()
def explain_images(model: ScoringDetector, images: Sequence[ImageInput]) -> list[Explanation]:
    """One :class:`Explanation` per image (a path, PIL image or numpy array, any size)."""
    fapm = check_explainable(model)
    transform = model.transform
    pils = [as_pil(x) for x in images]
    batch = torch.stack([transform.image(p) for p in pils]).to(model.device)
    maps = model.runnable().embed(batch)
    knn = fapm.search(maps)
    prediction = fapm.postprocess(knn)
    raw, patch = prediction.pred_score.cpu(), prediction.patch_scores.cpu()  # the cells with image pixels
    located = [tuple(t.cpu() for t in found) for found in fapm.nearest_sources(maps)]
    views = TrainingViews(model)
    out = []
    for b, (item, pil) in enumerate(zip(images, pils)):
        y, x = divmod(int(patch[b].flatten().argmax()), patch.shape[2])
        test_view = transform.view(pil)
        layers = [_layer_match(model, fapm, layer, (distances[b], sources[b], regions[b]), (y, x),
                               knn.shape[1:3], test_view, pil.size, views)
                  for layer, (distances, sources, regions) in enumerate(located)]
        path = str(item) if isinstance(item, (str, os.PathLike)) else None
        out.append(Explanation(path, float(raw[b]), (y, x), float(patch[b, y, x]), layers, test_view))
    return out


class TrainingViews:
    """The model's view of each training image, read once: index -> (view ``[S, S, 3]``, its size)."""

    def __init__(self, model) -> None:
        self.model, self.views = model, {}

    def __getitem__(self, index: int) -> tuple[np.ndarray, tuple[int, int]]:
        paths = self.model.train_images
        if index >= len(paths):
            raise ConfigError(f"a memory vector's source is training image {index}, but the model records "
                              f"{len(paths)} training images: a damaged model file?")
        if index not in self.views:
            pil = load_image(paths[index])
            self.views[index] = self.model.transform.view(pil), pil.size
        return self.views[index]


def _layer_match(model: ScoringDetector, fapm: FAPMModel, layer: int, found: tuple[Tensor, Tensor, Tensor],
                 position: tuple[int, int], fine: tuple[int, int], test_view: np.ndarray, size: tuple[int, int],
                 views: TrainingViews) -> LayerMatch:
    """One layer's :class:`LayerMatch` at the fine ``position``, from its 1-NN distances, source
    rows and source regions ``found`` (each ``[h, w]``, of one image)."""
    distances, sources, regions = found
    (rows, cols), (h, w) = fapm.grid, distances.shape
    sy, sx = h // rows, w // cols
    cy, cx = position[0] * h // fine[0], position[1] * w // fine[1]  # the coarse cell tiling the fine one
    region = int(regions[cy, cx])  # the region whose bank holds the match (the own one, or a neighbour)
    gy, gx = divmod(region, cols)
    index, cell = divmod(int(sources[cy, cx]), sy * sx)
    train_cell = (gy * sy + cell // sx, gx * sx + cell % sx)  # that region, the recorded cell
    train_view, train_size = views[index]
    stride = fapm.padded[0] // h
    test_crop, test_box = _crop(test_view, (cy, cx), stride, fapm.pool_size)
    train_crop, train_box = _crop(train_view, train_cell, stride, fapm.pool_size)
    transform = model.transform
    return LayerMatch(layer, stride, region, (gy, gx), float(distances[cy, cx]), (cy, cx), train_cell, index,
                      model.train_images[index], test_box, train_box, transform.box_on_input(test_box, size),
                      transform.box_on_input(train_box, train_size), test_crop, train_crop, train_view)
