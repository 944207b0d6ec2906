"""Figures of the tutorial notebooks, drawn to be read at the book's column width.

Every figure is at most :data:`FIGURE_WIDTH` inches wide at 100 dpi (1000 px: the notebook
column of the book at a 1280 px window), in rows of at most four panels, and every heatmap has
a colour bar with its unit. The functions return a ``matplotlib.figure.Figure`` that is not
registered with pyplot: a cell shows it once, as its result (or with ``display``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..report.viz import _show_figures_in_ipython

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

#: Width of every figure, inches (100 dpi: 1000 px, the book's notebook column at 1280 px).
FIGURE_WIDTH = 10.0
#: Colour map of anomaly maps and distances (the overlays of the library use the same).
HEAT = "jet"

__all__ = ["FIGURE_WIDTH", "colorbar", "figure", "greedy_steps_figure", "grouped_gallery", "heatmap",
           "heldout_histogram", "image_grid", "overlay_axes", "panels", "picture_row", "planted_figure",
           "pooling_figure", "radius_figure", "region_grid_figure", "roc_figure", "search_steps_figure",
           "stage_bars", "threshold_figure", "transform_figure", "viewable"]


def _numpy(values: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().to("cpu", torch.float32).numpy()
    return np.asarray(values)


def figure(height: float, width: float = FIGURE_WIDTH) -> Figure:
    """An empty figure ``width`` x ``height`` inches, constrained layout, shown once in a notebook."""
    from matplotlib.figure import Figure

    _show_figures_in_ipython()
    return Figure(figsize=(width, height), layout="constrained")


def panels(n: int, ncols: int = 3, panel_height: float = 3.0, width: float = FIGURE_WIDTH,
           **subplot_kw: Any) -> tuple[Figure, list[Axes]]:
    """A figure of ``n`` panels in rows of at most ``ncols`` (at most four), the axes in reading
    order; the cells of the last row left over are hidden."""
    ncols = max(1, min(ncols, n, 4))
    nrows = math.ceil(n / ncols)
    fig = figure(panel_height * nrows, width)
    axes = list(fig.subplots(nrows, ncols, squeeze=False, **subplot_kw).flat)
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def colorbar(fig: Figure, mappable: ScalarMappable, ax: Axes | Sequence[Axes], label: str) -> None:
    """A colour bar beside ``ax`` (one axes or several sharing it) with its ``label``, opaque
    even when the map is drawn half transparent over an image."""
    from matplotlib.cm import ScalarMappable

    solid = ScalarMappable(norm=mappable.norm, cmap=mappable.cmap)
    bar = fig.colorbar(solid, ax=ax, shrink=0.9, pad=0.02)
    bar.set_label(label)


def heatmap(ax: Axes, values: Tensor | np.ndarray, title: str, label: str | None = None,
            cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
            **imshow_kw: Any) -> ScalarMappable:
    """``values [h, w]`` as an image with ``title``; with a ``label``, a colour bar beside it.
    Returns the image (for a colour bar shared by several panels)."""
    shown = ax.imshow(_numpy(values), cmap=cmap, vmin=vmin, vmax=vmax, **imshow_kw)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if label is not None:
        colorbar(ax.figure, shown, ax, label)
    return shown


def overlay_axes(ax: Axes, image: np.ndarray, anomaly_map: Tensor | np.ndarray, vmin: float, vmax: float,
                 mask: np.ndarray | Tensor | None = None, title: str = "", alpha: float = 0.5) -> ScalarMappable:
    """The image, the anomaly map over it (colour map :data:`HEAT`, ``vmin..vmax``, half
    transparent) and the ground-truth ``mask`` outlined in white. Returns the map's image, for a
    colour bar."""
    ax.imshow(image)
    shown = ax.imshow(_numpy(anomaly_map), cmap=HEAT, vmin=vmin, vmax=vmax, alpha=alpha)
    if mask is not None and _numpy(mask).any():
        ax.contour(_numpy(mask).astype(float), levels=[0.5], colors="white", linewidths=1.2)
    ax.set_title(title)
    ax.set_axis_off()
    return shown


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], ncols: int = 4,
               masks: Sequence[np.ndarray | Tensor | None] | None = None, panel_height: float = 2.6) -> Figure:
    """Images in rows of at most ``ncols``, each with its title and, when given, its ground-truth
    mask outlined in red (an empty mask draws nothing)."""
    fig, axes = panels(len(images), ncols, panel_height)
    for i, (ax, image, title) in enumerate(zip(axes, images, titles)):
        ax.imshow(image)
        mask = None if masks is None else masks[i]
        if mask is not None and _numpy(mask).any():
            ax.contour(_numpy(mask).astype(float), levels=[0.5], colors="red", linewidths=1.2)
        ax.set_title(title)
        ax.set_axis_off()
    return fig


def grouped_gallery(groups: Mapping[str, Sequence[Mapping[str, Any]]], vmin: float, vmax: float,
                    label: str = "anomaly score", ncols: int = 3, panel_height: float = 2.9) -> Figure:
    """Overlays in one row per group (the group's name at the left of its row), one colour scale
    ``vmin..vmax`` and its colour bar. Each item: ``image [S, S, 3]`` uint8, ``map [S, S]``,
    ``mask`` or None, ``title``."""
    rows = [(name, items) for name, items in groups.items() if items]
    ncols = max(1, min(ncols, max(len(items) for _, items in rows)))
    fig = figure(panel_height * len(rows))
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    shown = None
    for r, (name, items) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(items):
                ax.set_axis_off()
                continue
            item = items[c]
            shown = overlay_axes(ax, item["image"], item["map"], vmin, vmax, item.get("mask"), item["title"])
            ax.title.set_fontsize(9)
        axes[r, 0].text(-0.08, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, ha="right",
                        va="center", fontsize=11, fontweight="bold")
    colorbar(fig, shown, list(axes.flat), label)
    return fig


def stage_bars(times: Mapping[str, Mapping[str, float]], stages: Sequence[str] = ("backbone", "search",
                                                                                    "post-processing"),
               unit: str = "ms per image") -> Figure:
    """Horizontal stacked bars: per method (a row), its time per stage, one colour per stage."""
    fig = figure(0.6 + 0.55 * len(times), width=8.0)
    ax = fig.subplots()
    names = list(times)
    left = np.zeros(len(names))
    for stage in stages:
        values = np.array([times[name][stage] for name in names])
        ax.barh(names, values, left=left, label=stage)
        left += values
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def transform_figure(original: Any, item: Mapping[str, Any], transform: Any) -> Figure:
    """What the pre-processing does to one image: the ``original`` (a PIL image) with the part
    the network sees boxed in red, the network input (``item["image"]``, denormalised) and the
    mask after the same geometry (``item["mask"]``)."""
    from matplotlib.patches import Rectangle

    from ..report.viz import denormalize

    height, width = transform.output_size(original.size)
    left, top, right, bottom = transform.box_on_input((0, 0, width, height), original.size)
    fig, axes = panels(3, 3, panel_height=3.6)
    axes[0].imshow(original)
    axes[0].add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, color="red", lw=2))
    axes[0].set_title(f"original {original.size[0]}x{original.size[1]}")
    axes[1].imshow(denormalize(item["image"], transform.mean, transform.std))
    axes[1].set_title(f"network input {tuple(item['image'].shape)}")
    axes[2].imshow(_numpy(item["mask"]), cmap="gray", vmin=0, vmax=1)
    axes[2].set_title(f"mask {tuple(item['mask'].shape)}")
    for ax in axes:
        ax.set_axis_off()
    return fig


def viewable(image: Tensor, transform: Any) -> np.ndarray:
    """A normalised network input ``[3, S, S]`` back to a picture, uint8 ``[S, S, 3]``."""
    from ..report.viz import denormalize

    return denormalize(image, transform.mean, transform.std)


def pooling_figure(raw: Sequence[Tensor], pooled: Sequence[Tensor], strides: Sequence[int]) -> Figure:
    """Per layer (a row), the vector length at each position of the first image before and after
    the 3 x 3 average pooling, on one colour scale per layer."""
    fig, axes = panels(2 * len(strides), ncols=2, panel_height=3.4, width=7.6)
    for row, (stride, before, after) in enumerate(zip(strides, raw, pooled)):
        lengths = [before[0].norm(dim=0), after[0].norm(dim=0)]
        top = float(max(length.max() for length in lengths))
        pair = axes[2 * row : 2 * row + 2]
        for ax, length, name in zip(pair, lengths, ("raw", "3 x 3 pooled")):
            shown = heatmap(ax, length, f"stride {stride}, {name}", vmin=0, vmax=top)
        colorbar(fig, shown, pair, "vector length |f|")
    return fig


def region_grid_figure(image: np.ndarray, sides: Sequence[int], strides: Sequence[int], grid: int,
                       region: int) -> Figure:
    """The image once per layer with that layer's feature cells (thin white lines), the region
    grid (yellow) and one region boxed in red, drawn over the lines."""
    from matplotlib.patches import Rectangle

    size = image.shape[0]
    fig, axes = panels(len(sides), ncols=2, panel_height=4.6, width=9.0)
    gy, gx = divmod(region, grid)
    for ax, stride, side in zip(axes, strides, sides):
        ax.imshow(image)
        for i in range(1, side):
            ax.axhline(i * size / side, color="white", lw=0.4)
            ax.axvline(i * size / side, color="white", lw=0.4)
        for i in range(1, grid):
            ax.axhline(i * size / grid, color="yellow", lw=1.5)
            ax.axvline(i * size / grid, color="yellow", lw=1.5)
        cell = size / grid
        ax.add_patch(Rectangle((gx * cell, gy * cell), cell, cell, fill=False, color="red", lw=3, zorder=5))
        ax.set_title(f"stride {stride}: {side}x{side} cells, {side // grid}x{side // grid} "
                     f"per region\nred: region {region}")
        ax.set_axis_off()
    return fig


def search_steps_figure(image: np.ndarray, per_layer: Sequence[Tensor], strides: Sequence[int], fused: Tensor,
                        anomaly_map: Tensor, mask: Tensor | None) -> Figure:
    """The search step by step for one image: the input, each layer's nearest distances on its
    own grid, their sum on the stride-8 grid and the anomaly map (ground truth outlined), each
    with its colour bar."""
    fig, axes = panels(3 + len(per_layer), ncols=3, panel_height=3.1)
    axes[0].imshow(image)
    axes[0].set_title("input")
    axes[0].set_axis_off()
    for ax, stride, distances in zip(axes[1:], strides, per_layer):
        heatmap(ax, distances[0, ..., 0], f"stride {stride}: nearest distance", "L2 distance", HEAT)
    heatmap(axes[-2], fused[0, ..., 0], "fused on the stride-8 grid", "sum of distances", HEAT)
    heatmap(axes[-1], anomaly_map[0], "anomaly map (224 x 224)", "anomaly score", HEAT)
    if mask is not None and _numpy(mask).any():
        axes[-1].contour(_numpy(mask).astype(float), levels=[0.5], colors="white", linewidths=1)
    return fig


def planted_figure(image: np.ndarray, fused: Mapping[str, Tensor], square: tuple[int, int, int]) -> Figure:
    """A planted anomaly and the fused distances under two layer alignments (one colour scale),
    and their difference (blue: the second takes away, red: it adds); ``square`` = (top, left,
    side) of the planted cells on the fused grid, outlined in every map."""
    from matplotlib.patches import Rectangle

    (name_a, a), (name_b, b) = fused.items()
    top, left, side = square
    fig, axes = panels(4, ncols=2, panel_height=3.7, width=8.6)
    axes[0].imshow(image)
    axes[0].set_title("planted square")
    axes[0].set_axis_off()
    high = float(max(a.max(), b.max()))
    for ax, values, title in ((axes[1], a, f"fused, {name_a}"), (axes[2], b, f"fused, {name_b}")):
        heatmap(ax, values[0, ..., 0], title, "sum of distances", HEAT, vmin=0, vmax=high)
    diff = (b - a)[0, ..., 0]
    spread = float(diff.abs().max()) or 1.0
    heatmap(axes[3], diff, f"{name_b} - {name_a}", "difference", "coolwarm", vmin=-spread, vmax=spread)
    for ax in axes[1:]:
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, color="black", lw=1.5))
    return fig


def greedy_steps_figure(xy: np.ndarray, order: np.ndarray, radii: np.ndarray, steps: Sequence[int]) -> Figure:
    """Greedy k-center on 2-D coordinates ``xy [N, 2]`` (a projection, for display): after each
    number of centres in ``steps``, the centres chosen so far (blue), the vector chosen next
    (red circle) and the covering radius; rows of three."""
    fig, axes = panels(len(steps), ncols=3, panel_height=3.0)
    for ax, m in zip(axes, steps):
        ax.scatter(*xy.T, s=3, c="lightgray")
        ax.scatter(*xy[order[:m]].T, s=16, c="tab:blue")
        if m < len(order):
            ax.scatter(*xy[order[m]], s=80, facecolors="none", edgecolors="red", linewidths=1.5)
        ax.set_title(f"{m} centre{'s' if m > 1 else ''}: radius {radii[m - 1]:.2f}")
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def radius_figure(image: np.ndarray, memories: Sequence[Any], strides: Sequence[int], grid: int,
                  title: str) -> Figure:
    """An example image beside each layer's covering radius per region (at the base ratio) on
    the region grid, its far regions marked, each with its colour bar."""
    fig, axes = panels(1 + len(memories), ncols=3, panel_height=3.4)
    axes[0].imshow(image, extent=(-0.5, grid - 0.5, grid - 0.5, -0.5))
    axes[0].set_title(title)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    for ax, stride, memory in zip(axes[1:], strides, memories):
        heatmap(ax, memory.radii.reshape(grid, grid), f"stride {stride}: {int(memory.far.sum())} of "
                f"{memory.n_regions} far", "covering radius (L2)", "magma")
        for region in memory.far.nonzero().flatten().tolist():
            ax.text(region % grid, region // grid, "far", ha="center", va="center", color="cyan", fontsize=8)
    return fig


def threshold_figure(heldout: np.ndarray, raw: np.ndarray, labels: np.ndarray, threshold: float) -> Figure:
    """Against the threshold (raw units): the false alarms among the held-out normal training
    scores (what sets it), and, measured on the test set, the good images flagged and the
    defects missed; the calibrated ``threshold`` as a red line."""
    grid = np.linspace(min(heldout.min(), raw.min()), max(heldout.max(), raw.max()), 200)
    good, bad = raw[labels == 0], raw[labels == 1]
    fig = figure(3.4, width=8.0)
    ax = fig.subplots()
    ax.plot(grid, [(heldout >= t).mean() for t in grid], label="false alarms, held-out training")
    if good.size:
        ax.plot(grid, [(good >= t).mean() for t in grid], "--", label="false alarms, test good")
    if bad.size:
        ax.plot(grid, [(bad < t).mean() for t in grid], "--", label="misses, test defects")
    ax.axvline(threshold, color="tab:red", lw=1, label="calibrated threshold")
    ax.set_xlabel("threshold (raw units)")
    ax.set_ylabel("fraction of images")
    ax.legend(fontsize=8)
    return fig


def picture_row(pictures: Sequence[np.ndarray], titles: Sequence[str], panel_height: float = 4.2,
                width: float = FIGURE_WIDTH) -> Figure:
    """Finished pictures (uint8 ``[H, W, 3]``: overlays with their own colour bar, explanation
    panels) side by side, each under its title, no axes."""
    fig, axes = panels(len(pictures), ncols=len(pictures), panel_height=panel_height, width=width)
    for ax, picture, title in zip(axes, pictures, titles):
        ax.imshow(picture)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    return fig


def roc_figure(results: Mapping[str, Any]) -> Figure:
    """ROC curves of evaluations (``name -> EvalResult``): image level (one point per threshold on
    the image scores) and, with masks, pixel level; each curve labelled with its AUROC."""
    from .notebook import roc_points

    def label(name: str, value: float | None) -> str:
        return f"{name} (AUROC {'n/a' if value is None else f'{value:.3f}'})"

    fig = figure(4.3)
    axes = fig.subplots(1, 2)
    for name, result in results.items():
        fpr, tpr = roc_points(result.scores, result.labels)
        axes[0].plot(fpr, tpr, label=label(name, result.metrics["image_auroc"]))
        if result.masks is not None:
            fpr, tpr = roc_points(result.maps, result.masks)
            axes[1].plot(fpr, tpr, label=label(name, result.metrics["pixel_auroc"]))
    for ax, title in zip(axes, ("image level", "pixel level")):
        ax.plot([0, 1], [0, 1], color="gray", ls=":")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(title)
        ax.legend(loc="lower right", fontsize=9)
    return fig


def heldout_histogram(heldout: np.ndarray, threshold: float, rate: float) -> Figure:
    """The held-out normal training scores the image threshold comes from, and the threshold."""
    fig = figure(3.2, width=7.5)
    ax = fig.subplots()
    ax.hist(heldout, bins=20, color="tab:blue", alpha=0.8,
            label=f"held-out normal training images (n={len(heldout)})")
    ax.axvline(threshold, color="tab:red", label=f"threshold at {rate:.0%} false alarms")
    ax.set_xlabel("raw image score")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    return fig
