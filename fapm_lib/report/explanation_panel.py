"""Pictures of an explanation (:mod:`fapm_lib.decisions.nearest_patch`): per layer, the test image with
the explained cell boxed, the test crop, the nearest training crop, and the training image with
its source cell boxed, side by side, captioned with the region, the distance and the source."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..decisions.nearest_patch import Explanation, LayerMatch
from .viz import hstack_with_gaps as hstack_with_gaps
from .viz import with_caption

TILE = 160  # side of each of the four pictures of a row, pixels
BOX_RGB = (255, 255, 0)
#: The paper's names of the two maps (Wide-ResNet-50's ``layer2`` and ``layer3``); a caption names
#: a map by its stride, which holds for every backbone, and gives the paper's name after it.
LAYER_NAMES = ("layer 2", "layer 3")


def _tile(picture: np.ndarray, box: tuple[float, ...] | None = None) -> np.ndarray:
    """``picture [H, W, 3]`` scaled to ``TILE x TILE`` (a crop: nearest neighbour, so its pixels
    stay visible; a view: bilinear), with ``box`` (view pixels) outlined."""
    pil = Image.fromarray(picture)
    scale = TILE / pil.width
    if box is None:
        return np.asarray(pil.resize((TILE, TILE), Image.Resampling.NEAREST))
    pil = pil.resize((TILE, TILE), Image.Resampling.BILINEAR)
    left, top, right, bottom = (v * scale for v in box)
    ImageDraw.Draw(pil).rectangle([left, top, right - 1, bottom - 1], outline=BOX_RGB, width=2)
    return np.asarray(pil)


def layer_caption(match: LayerMatch) -> str:
    """One line: the map (its stride, the paper's layer name), region, distance, source image and cell."""
    name = LAYER_NAMES[match.layer] if match.layer < len(LAYER_NAMES) else f"layer {match.layer}"
    return (f"stride-{match.stride} map (paper: {name})  region {match.region} {match.region_yx}  "
            f"distance {match.distance:.2f}  nearest: {Path(match.train_image).name} cell {match.train_cell}")


def explanation_panel(explanation: Explanation, title: str = "") -> np.ndarray:
    """uint8 ``[H, W, 3]``: a title line, then per layer ``[test view | test crop | training
    crop | training view]`` under its caption (:func:`layer_caption`)."""
    rows = []
    for match in explanation.layers:
        tiles = [_tile(explanation.test_view, match.test_box), _tile(match.test_crop),
                 _tile(match.train_crop), _tile(match.train_view, match.train_box)]
        rows.append(with_caption(hstack_with_gaps(tiles), layer_caption(match)))
    head = title or (f"{explanation.path or 'image'}: position {explanation.position}, "
                     f"score there {explanation.patch_score:.2f}")
    gap = np.full((4, rows[0].shape[1], 3), 128, dtype=np.uint8)
    body = np.concatenate([piece for row in rows for piece in (row, gap)][:-1], axis=0)
    return with_caption(body, head + "   (test | test crop | nearest normal crop | its training image)")
