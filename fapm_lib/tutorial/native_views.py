"""Notebook 08's helpers: what a geometry shows the model of an image (the protocol's crop, the
native canvas, its tiles and regions), how many defects a crop hides, and the side-by-side
pictures."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from ..data.images import load_image, load_mask
from ..data.samples import Sample
from ..data.transform import Transform
from ..detectors.fapm import FAPM

Box = tuple[float, float, float, float]  # left, top, right, bottom, in the input's pixels


@dataclass(frozen=True)
class HiddenDefects:
    """Defects of a test split against a view (image paths): ``outside`` wholly outside it, ``partly`` cut by
    its border, ``total`` defect images with a mask."""

    outside: list[str]
    partly: list[str]
    total: int

    @property
    def share_outside(self) -> float:
        return len(self.outside) / max(1, self.total)


def view_box(transform: Transform, size: tuple[int, int]) -> Box:
    """What ``transform`` shows the model of an input of ``size`` (width, height), in its pixels."""
    width, height = transform.placement(size).view
    return transform.box_on_input((0, 0, width, height), size)


def hidden_defects(samples: Sequence[Sample], transform: Transform) -> HiddenDefects:
    """Which defects of ``samples`` (their masks read at full size) lie outside ``transform``'s view."""
    outside, partly, total = [], [], 0
    for sample in samples:
        if sample.mask_path is None:
            continue
        image = load_image(sample.path)
        mask = np.asarray(load_mask(sample.mask_path, image.size)) > 0
        left, top, right, bottom = (round(v) for v in view_box(transform, image.size))
        inside = int(mask[top:bottom, left:right].sum())
        total += 1
        if inside == 0:
            outside.append(str(sample.path))
        elif inside < int(mask.sum()):
            partly.append(str(sample.path))
    return HiddenDefects(outside, partly, total)


def tile_boxes(model: FAPM) -> list[Box]:
    """The backbone's tiles of a fitted native model, on its padded canvas."""
    tiles = model.model.tiles
    height, width = tiles.size
    return [(x, y, x + width, y + height) for y in tiles.ys for x in tiles.xs]


def region_lines(model: FAPM) -> tuple[list[float], list[float]]:
    """The region borders of a fitted model, in canvas pixels: ``(rows' y, columns' x)``."""
    rows, cols = model.region_grid
    height, width = model.padded
    return [height * i / rows for i in range(1, rows)], [width * i / cols for i in range(1, cols)]


def draw_box(ax: Axes, box: Box, colour: str, label: str | None = None, width: float = 2.0) -> None:
    """An outlined box on ``ax`` (in the image's pixels), above the picture and its grid lines."""
    left, top, right, bottom = box
    ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor=colour, linewidth=width,
                           label=label, zorder=5))


def show_on(ax: Axes, picture: np.ndarray, title: str, mask: np.ndarray | None = None) -> None:
    """``picture`` on ``ax`` with a title, no ticks, the ground truth outlined in green."""
    ax.imshow(picture)
    if mask is not None and mask.any():
        ax.contour(mask, levels=[0.5], colors="lime", linewidths=1.0)
    ax.set_title(title, fontsize=11)
    ax.set_axis_off()
