"""Interactive explorer of FAPM's memory settings: refit from cached features, redraw heatmaps.

The backbone runs once (train and test maps cached by :meth:`FAPM.extract`); every change of
ratio, multiplier, grid or k rebuilds the memories from the cache and rescores the test set.
Greedy k-center prefixes are nested, so one greedy run per region grid and layer serves every
ratio and multiplier: it is extended only when a larger memory is asked for, and each bank is a
prefix of it (the same banks :meth:`FAPM.fit_maps` builds, without repeating the greedy steps).
"""
from __future__ import annotations

import io
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..decisions.metrics import image_auroc, pixel_auroc
from ..detectors.fapm import FAPM
from ..errors import ConfigError, FAPMError
from ..method.coreset import GreedyKCenter, coreset_size, random_projection
from ..method.memory import LayerMemory
from ..method.memory_builders import memory_from_greedy
from ..method.regions import split_regions, valid_grids
from ..report.tables import percent
from ..report.viz import denormalize, overlay, with_caption

if TYPE_CHECKING:
    import ipywidgets
    from matplotlib.figure import Figure

    from ..data.mvtec import MVTecDataset

#: Slider ranges of the UI.
RATIO_RANGE = (0.01, 0.5)
MULTIPLIER_RANGE = (1.0, 4.0)
K_RANGE = (2, 8)  # k acts through the re-weighted score, which needs k >= 2
#: Caption height of the explorer's picture, pixels (legible at the book's column width).
CAPTION_PX = 15


@dataclass
class ExplorerView:
    """The result of one setting: metrics, model size, example maps ``[E, S, S]`` and scores ``[E]``.

    ``error`` holds a one-line message (and the rest stays empty) when the setting is invalid,
    e.g. k larger than the smallest bank. ``timings`` are seconds: coreset, search (k-NN and
    post-processing of the whole test set), metrics, total.
    """

    ratio: float
    multiplier: float
    grid: int
    k: int
    error: str | None = None
    image_auroc: float | None = None
    pixel_auroc: float | None = None
    maps: Tensor | None = None
    scores: Tensor | None = None
    vmin: float = 0.0
    vmax: float = 1.0
    memory_vectors: int = 0
    memory_megabytes: float = 0.0
    far_regions: tuple[int, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.timings.get("total", 0.0)


def prefix_memory(regions: Tensor, greedy: GreedyKCenter, ratio: float, multiplier: float,
                  sampling: str = "adaptive") -> LayerMemory:
    """Memory of one layer from a cached greedy run over ``regions [R, N, C]``, extended for all
    regions as far as needed (so later moves of the sliders reuse it)."""
    n = regions.shape[1]
    greedy.extend(coreset_size(n, ratio * multiplier if sampling == "adaptive" else ratio))
    return memory_from_greedy(regions, greedy, ratio, multiplier, sampling)


def choose_examples(labels: Sequence[int], defect_types: Sequence[str], n: int = 4) -> list[int]:
    """Fixed test images to display: the first good one, then the first image of each defect
    type in turn (round robin) until ``n`` are chosen."""
    goods = [i for i, label in enumerate(labels) if label == 0][:1]
    by_type: dict[str, list[int]] = {}
    for i, (label, kind) in enumerate(zip(labels, defect_types)):
        if label == 1:
            by_type.setdefault(kind, []).append(i)
    queues = list(by_type.values())
    picks = list(goods)
    depth = 0
    while len(picks) < n and any(depth < len(q) for q in queues):
        picks += [q[depth] for q in queues if depth < len(q)][: n - len(picks)]
        depth += 1
    return picks


class Explorer:
    """Refits FAPM memories from cached maps and rescores the test set for new settings.

    ``train_maps``/``test_maps``: per layer ``[N, C, h, w]`` (from :meth:`FAPM.extract`);
    ``labels [T]``; ``masks [T, S, S]`` bool or None; ``images [E, S, S, 3]`` uint8 of the
    examples ``examples [E]`` (test indices) with their ``titles``. Pixel AUROC is computed on a
    fixed subsample: every ``pixel_stride``-th row and column of every test map.
    """

    def __init__(self, model: FAPM, train_maps: list[Tensor], test_maps: list[Tensor], labels: Tensor,
                 masks: Tensor | None, images: np.ndarray, examples: Sequence[int], titles: Sequence[str],
                 pixel_stride: int = 4) -> None:
        if model.config.native:
            raise ConfigError("the explorer's grid slider acts on the paper's square input: build the model with "
                              "resize and crop_size (e.g. resize=256, crop_size=224)")
        self.model = FAPM(model.config, model.device, extractor=model.extractor)
        self.config = model.config
        self.train_maps = [m.to(model.device) for m in train_maps]
        self.test_maps = [m.to(model.device) for m in test_maps]
        self.labels = labels
        self.masks = masks
        self.images = images
        self.examples = list(examples)
        self.titles = list(titles)
        self.pixel_stride = pixel_stride
        self.grid_options = valid_grids(*(s for m in train_maps for s in m.shape[-2:]))
        self._runs: dict[int, tuple[list[Tensor], list[GreedyKCenter]]] = {}
        self._sub_masks = None if masks is None else masks[:, ::pixel_stride, ::pixel_stride]
        self._has_images = int(labels.unique().numel()) == 2
        masks = self._sub_masks
        self._has_pixels = masks is not None and bool(masks.any()) and not bool(masks.all())

    @classmethod
    def from_datasets(cls, model: FAPM, train: MVTecDataset, test: MVTecDataset, n_examples: int = 4,
                      progress: bool = False, pixel_stride: int = 4) -> Explorer:
        """Extract train and test maps once (the only backbone runs) and pick the examples."""
        train_maps = model.extract(train, progress, desc="train features")
        test_maps = model.extract(test, progress, desc="test features")
        labels = torch.tensor([s.label for s in test.samples])
        examples = choose_examples(labels.tolist(), [s.defect_type for s in test.samples], n_examples)
        masks = torch.stack([test[i]["mask"] for i in range(len(test))]) if test.has_masks else None
        tf = test.transform
        images = np.stack([denormalize(test[i]["image"], tf.mean, tf.std) for i in examples])
        titles = [f"{test.samples[i].defect_type}/{Path(test.samples[i].path).stem}" for i in examples]
        return cls(model, train_maps, test_maps, labels, masks, images, examples, titles, pixel_stride)

    def _run(self, grid: int) -> tuple[list[Tensor], list[GreedyKCenter]]:
        """Region features ``[R, N, C]`` and their greedy runs for one grid (made once, kept)."""
        if grid not in self._runs:
            regions = [split_regions(m, grid) for m in self.train_maps]
            cfg = self.config
            greedy = [GreedyKCenter(random_projection(r, cfg.coreset_projection, cfg.seed)) for r in regions]
            self._runs[grid] = (regions, greedy)
        return self._runs[grid]

    def check_grid(self, grid: int) -> int:
        """``grid``, or ConfigError when it does not divide both feature maps."""
        if grid not in self.grid_options:
            raise ConfigError(f"grid={grid} does not divide both feature maps; valid: {self.grid_options}")
        return grid

    def fit(self, ratio: float, multiplier: float, grid: int, k: int) -> FAPM:
        """Memories for these settings, from the cache; ConfigError for invalid settings."""
        self.check_grid(grid)
        config = self.config.replace(coreset_ratio=ratio, adaptive_multiplier=multiplier, grid=grid, k=k)
        regions, greedy = self._run(grid)
        memories = [prefix_memory(r, g, ratio, multiplier, config.sampling) for r, g in zip(regions, greedy)]
        self.model.config = config
        self.model.feature_sizes = [tuple(m.shape[-2:]) for m in self.train_maps]
        self.model.set_memories(memories)  # refuses a k above the smallest bank (max reads the nearest only)
        return self.model

    def update(self, ratio: float, multiplier: float, grid: int, k: int) -> ExplorerView:
        """Refit and rescore for new settings; an invalid setting gives a view with ``error``."""
        view = ExplorerView(ratio, multiplier, grid, k)
        start = time.perf_counter()
        try:
            model = self.fit(ratio, multiplier, grid, k)
        except FAPMError as exc:
            view.error = str(exc)
            view.timings["total"] = time.perf_counter() - start
            return view
        fitted = time.perf_counter()
        pred = model.predict_maps(self.test_maps)
        searched = time.perf_counter()
        if self._has_images:
            view.image_auroc = image_auroc(pred.pred_score, self.labels)
        if self._has_pixels:
            s = self.pixel_stride
            view.pixel_auroc = pixel_auroc(pred.anomaly_map[:, ::s, ::s], self._sub_masks)
        view.maps = pred.anomaly_map[self.examples].cpu()
        view.scores = pred.pred_score[self.examples].cpu()
        view.vmin, view.vmax = float(pred.anomaly_map.min()), float(pred.anomaly_map.max())
        size = model.memory_size()
        view.memory_vectors, view.memory_megabytes = int(size["vectors"]), float(size["megabytes"])
        view.far_regions = tuple(int(m.far.sum()) for m in model.memories)
        end = time.perf_counter()
        view.timings = {"coreset": fitted - start, "search": searched - fitted, "metrics": end - searched,
                        "total": end - start}
        return view

    def render_png(self, view: ExplorerView) -> bytes:
        """The examples' heatmap overlays side by side (ground truth outlined), captioned with
        the image and its score, and a colour bar of the common scale on the right, as PNG bytes."""
        if view.error is not None or view.maps is None or view.scores is None:
            raise ConfigError(f"nothing to draw: {view.error}")
        tiles = []
        for e, index in enumerate(self.examples):
            mask = None if self.masks is None else self.masks[index].numpy()
            tile = overlay(self.images[e], view.maps[e], vmin=view.vmin, vmax=view.vmax, mask=mask)
            tiles.append(with_caption(tile, f"{self.titles[e]}  {float(view.scores[e]):.1f}", CAPTION_PX))
        gap = np.full((tiles[0].shape[0], 4, 3), 255, dtype=np.uint8)
        bar = scale_bar(tiles[0].shape[0], view.vmin, view.vmax)
        panel = np.concatenate([part for tile in tiles for part in (tile, gap)] + [bar], axis=1)
        buffer = io.BytesIO()
        Image.fromarray(panel).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def strip(self, settings: Sequence[tuple[float, float]], grid: int | None = None, k: int | None = None
              ) -> tuple[Figure, list[ExplorerView]]:
        """What the sliders show, for several (ratio, multiplier) settings side by side: one
        column per setting (its memory and AUROCs above it), one row per example, every map on
        one colour scale with its colour bar. A setting the model refuses (e.g. ``k`` above its
        smallest bank) keeps its column, with the refusal in place of the maps, as the sliders'
        status line shows it; ConfigError only when every setting is refused. Returns the figure
        and the views."""
        from .plots import colorbar, figure, overlay_axes

        grid = self.config.grid_side if grid is None else grid
        k = self.config.k if k is None else k
        views = [self.update(ratio, multiplier, grid, k) for ratio, multiplier in settings]
        drawn = [v for v in views if v.error is None]
        if not drawn:
            raise ConfigError(f"cannot draw the strip: every setting is refused ({views[0].error})")
        vmin, vmax = min(v.vmin for v in drawn), max(v.vmax for v in drawn)
        rows, cols = len(self.examples), len(views)
        fig = figure(0.75 + 2.15 * rows, width=min(10.0, 1.2 + 2.2 * cols))
        axes = fig.subplots(rows, cols, squeeze=False)
        shown = None
        for c, view in enumerate(views):
            setting = f"r = {view.ratio:g}, a = {view.multiplier:g}"
            if view.error is not None:  # the refusal at the top of an empty column
                for ax in axes[:, c]:
                    ax.set_axis_off()
                axes[0, c].set_title(f"{setting}\nrefused", fontsize=9)
                axes[0, c].text(0.5, 0.5, textwrap.fill(view.error, 22), transform=axes[0, c].transAxes,
                                ha="center", va="center", fontsize=8, color="firebrick")
                continue
            for r, index in enumerate(self.examples):
                mask = None if self.masks is None else self.masks[index]
                title = f"score {float(view.scores[r]):.1f}"
                if r == 0:
                    title = (f"{setting}\n{view.memory_vectors:,} vectors\n"
                             f"image {_percent(view.image_auroc)}, pixel {_percent(view.pixel_auroc)}\n" + title)
                shown = overlay_axes(axes[r, c], self.images[r], view.maps[r], vmin, vmax, mask, title)
                axes[r, c].title.set_fontsize(9)
        for r in range(rows):  # the example's name left of its row
            axes[r, 0].text(-0.06, 0.5, self.titles[r], transform=axes[r, 0].transAxes, rotation=90,
                            ha="right", va="center", fontsize=9)
        colorbar(fig, shown, list(axes.flat), "anomaly score (fused nearest distance)")
        return fig, views

    def sweep(self, ratios: Sequence[float], multipliers: Sequence[float], grid: int | None = None,
              k: int | None = None) -> list[dict[str, float]]:
        """One row per (multiplier, ratio): the memory (vectors, MB) and both AUROCs."""
        grid = self.config.grid_side if grid is None else grid
        k = self.config.k if k is None else k
        rows = []
        for multiplier in multipliers:
            for ratio in ratios:
                view = self.update(ratio, multiplier, grid, k)
                if view.error is None:
                    rows.append({"r": ratio, "a": multiplier, "vectors": view.memory_vectors,
                                 "MB": view.memory_megabytes, "image AUROC": view.image_auroc,
                                 "pixel AUROC (1/16)": view.pixel_auroc})
        return rows


def sweep_figure(rows: Sequence[dict[str, float]]) -> Figure:
    """Pixel and image AUROC against the memory's size, one line per multiplier (1: a fixed
    ratio; above 1: FAPM's adaptive rule), each point labelled with its base ratio."""
    from .plots import figure

    fig = figure(3.8)
    axes = fig.subplots(1, 2)
    for multiplier in sorted({row["a"] for row in rows}):
        mine = [row for row in rows if row["a"] == multiplier]
        name = "fixed ratio r" if multiplier == 1 else f"adaptive: r and {multiplier:g} r"
        for ax, key in zip(axes, ("pixel AUROC (1/16)", "image AUROC")):
            points = [(row["vectors"], row[key], row["r"]) for row in mine if row[key] is not None]
            if not points:
                continue
            xs, ys, rs = zip(*points)
            ax.plot(xs, [100 * y for y in ys], "o-", label=name)
            for x, y, r in zip(xs, ys, rs):
                ax.annotate(f"{r:g}", (x, 100 * y), textcoords="offset points", xytext=(3, 4), fontsize=7)
    for ax, key in zip(axes, ("pixel AUROC, %", "image AUROC, %")):
        ax.set_xscale("log")
        ax.set_xlabel("memory vectors (both layers)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def scale_bar(height: int, vmin: float, vmax: float, width: int = 16, labels: int = 56) -> np.ndarray:
    """uint8 ``[height, width + labels, 3]``: the overlays' colour map from ``vmax`` (top) to
    ``vmin``, its ends and middle labelled."""
    from matplotlib import colormaps

    values = np.linspace(1.0, 0.0, height)
    colours = (colormaps["jet"](values)[:, :3] * 255).round().astype(np.uint8)
    strip = Image.new("RGB", (width + labels, height), (255, 255, 255))
    strip.paste(Image.fromarray(np.repeat(colours[:, None], width, axis=1)), (0, 0))
    draw, font = ImageDraw.Draw(strip), ImageFont.load_default(CAPTION_PX - 2)
    for fraction in (1.0, 0.5, 0.0):
        y = int(round((1 - fraction) * (height - 1)))
        draw.line([(0, y), (width + 2, y)], fill=(0, 0, 0))
        text_y = min(max(0, y - (CAPTION_PX - 2) // 2), height - CAPTION_PX)
        draw.text((width + 4, text_y), f"{vmin + fraction * (vmax - vmin):.0f}", fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def _percent(value: float | None) -> str:
    return percent(value, missing="n/a") + ("" if value is None else "%")


def status_text(view: ExplorerView, seconds: float, pixel_stride: int = 4) -> str:
    """One line for the UI, always ending in ``updated in X.XX s``."""
    if view.error is not None:
        return f"error: {view.error} | updated in {seconds:.2f} s"
    far = "/".join(str(f) for f in view.far_regions)
    return (f"image AUROC {_percent(view.image_auroc)} | pixel AUROC {_percent(view.pixel_auroc)} "
            f"(pixels subsampled {pixel_stride}x{pixel_stride}) | memory {view.memory_vectors:,} vectors, "
            f"{view.memory_megabytes:.2f} MB, far regions per layer {far} | updated in {seconds:.2f} s")


def build_widgets(explorer: Explorer, ratio: float = 0.1, multiplier: float = 2.0, grid: int | None = None,
                  k: int = 4) -> ipywidgets.VBox:
    """Sliders (ratio, multiplier, grid, k), the heatmap image and a status line, updated on
    every slider change. CSS classes: panel ``fapm-explorer``, image ``fapm-heatmap``, sliders
    ``fapm-ratio``, ``fapm-multiplier``, ``fapm-grid``, ``fapm-k``, label ``fapm-status``."""
    import ipywidgets as w

    grid = explorer.check_grid(explorer.config.grid_side if grid is None else grid)
    style = {"description_width": "initial"}
    sliders = {
        "ratio": w.FloatSlider(value=ratio, min=RATIO_RANGE[0], max=RATIO_RANGE[1], step=0.01,
                               description="base ratio r", readout_format=".2f"),
        "multiplier": w.FloatSlider(value=multiplier, min=MULTIPLIER_RANGE[0], max=MULTIPLIER_RANGE[1],
                                    step=0.25, description="multiplier a"),
        "grid": w.SelectionSlider(options=explorer.grid_options, value=grid, description="region grid"),
        "k": w.IntSlider(value=k, min=K_RANGE[0], max=K_RANGE[1], description="k",
                         # with the max score only the nearest distance is read: k would change nothing
                         disabled=explorer.config.image_score != "reweighted"),
    }
    image = w.Image(format="png")
    status = w.Label(value="")
    image.add_class("fapm-heatmap")
    status.add_class("fapm-status")
    for name, slider in sliders.items():
        slider.continuous_update = False
        slider.style = style
        slider.add_class(f"fapm-{name}")

    def refresh(_change: object = None) -> None:
        start = time.perf_counter()
        view = explorer.update(*(s.value for s in sliders.values()))
        if view.error is None:
            image.value = explorer.render_png(view)
        status.value = status_text(view, time.perf_counter() - start, explorer.pixel_stride)

    for slider in sliders.values():
        slider.observe(refresh, names="value")
    refresh()
    panel = w.VBox([w.HBox([sliders["ratio"], sliders["multiplier"]]), w.HBox([sliders["grid"], sliders["k"]]),
                    image, status])
    panel.add_class("fapm-explorer")
    return panel
