"""Pictures of results: heatmaps, overlays, side-by-side panels, PNG/GIF files, galleries.

Images are numpy ``uint8`` arrays [H,W,3] (RGB); anomaly maps are float [H,W] arrays or
tensors; masks are bool/{0,1} [H,W]. Files are written atomically. matplotlib is used only
through ``matplotlib.colormaps`` and ``matplotlib.figure.Figure`` (never pyplot), so this
module never selects or changes the backend a notebook has configured.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ..errors import FAPMError
from ..system.atomic import write_with_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "denormalize",
    "heatmap_rgb",
    "overlay",
    "save_png",
    "result_panel",
    "save_gif",
    "plot_gallery",
    "calibrated_overlay",
]

OUTLINE_RGB = (255, 255, 255)  # ground-truth outline; white does not occur in the jet colormap
TRUTH_RGB = (0, 255, 0)  # ground truth beside a predicted mask (white) in calibrated overlays
_GAP = 4  # pixels between the panels of result_panel


def _as_float_map(anomaly_map: np.ndarray | torch.Tensor) -> np.ndarray:
    """[H,W] array or tensor (any device) -> float32 numpy [H,W]."""
    if isinstance(anomaly_map, torch.Tensor):
        anomaly_map = anomaly_map.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(anomaly_map, dtype=np.float32)
    if array.ndim != 2:
        raise FAPMError(f"anomaly map must be [H,W], got shape {array.shape}")
    return array


def _check_rgb(image_rgb: np.ndarray) -> None:
    """Require a uint8 [H,W,3] array."""
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise FAPMError(f"image must be uint8 [H,W,3], got {image_rgb.dtype} {image_rgb.shape}")


def _check_same_size(image_rgb: np.ndarray, other: np.ndarray, what: str) -> None:
    """Require ``other`` [H,W] or [H,W,C] to match the image's [H,W]."""
    if other.shape[:2] != image_rgb.shape[:2]:
        raise FAPMError(f"{what} is {other.shape[:2]} but the image is {image_rgb.shape[:2]}")


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo channel normalisation: [3,H,W] normalised tensor -> [H,W,3] uint8 RGB; a gray
    [1,H,W] (normalised with the first channel's mean and std, as the transform does) -> its
    gray [H,W,3]."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise FAPMError(f"image must be [3,H,W] or [1,H,W], got shape {tuple(image.shape)}")
    pixels = image.detach().to("cpu", torch.float32)
    channels = image.shape[0]
    pixels = pixels * torch.tensor(std[:channels]).view(-1, 1, 1) + torch.tensor(mean[:channels]).view(-1, 1, 1)
    pixels = pixels.expand(3, -1, -1)
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def heatmap_rgb(
    anomaly_map: np.ndarray | torch.Tensor,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "jet",
) -> np.ndarray:
    """[H,W] scores -> [H,W,3] uint8 colours; values are clipped to [vmin, vmax]
    (default: the map's own min and max; a constant map gets the lowest colour)."""
    from matplotlib import colormaps

    scores = _as_float_map(anomaly_map)
    low = float(scores.min()) if vmin is None else vmin
    high = float(scores.max()) if vmax is None else vmax
    scaled = np.clip((scores - low) / (high - low), 0, 1) if high > low else np.zeros_like(scores)
    return (colormaps[cmap](scaled)[..., :3] * 255).round().astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """[H,W] mask -> [H,W] bool: its pixels that touch the outside (or the image border)."""
    region = np.asarray(mask, dtype=bool)
    return region & ~ndimage.binary_erosion(region)


def overlay(
    image_rgb: np.ndarray,
    anomaly_map: np.ndarray | torch.Tensor,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a heatmap of ``anomaly_map`` [H,W] over ``image_rgb`` [H,W,3] uint8 with weight
    ``alpha``; outline ``mask`` [H,W], if given, in ``OUTLINE_RGB``. -> [H,W,3] uint8."""
    _check_rgb(image_rgb)
    heat = heatmap_rgb(anomaly_map, vmin, vmax)
    _check_same_size(image_rgb, heat, "anomaly map")
    blended = (1 - alpha) * image_rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    result = np.clip(blended, 0, 255).round().astype(np.uint8)
    if mask is not None:
        _check_same_size(image_rgb, np.asarray(mask), "mask")
        result[_outline(mask)] = OUTLINE_RGB
    return result


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write a uint8 [H,W,3] (or grey [H,W]) array as a PNG, atomically; return the path."""
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3):
        raise FAPMError(f"PNG data must be uint8 [H,W] or [H,W,3], got {rgb.dtype} {rgb.shape}")
    picture = Image.fromarray(rgb)
    return write_with_atomic(path, lambda tmp: picture.save(tmp, format="PNG"))


def _mask_rgb(mask: np.ndarray) -> np.ndarray:
    """[H,W] mask -> [H,W,3] uint8, white where anomalous, black elsewhere."""
    return np.repeat(np.asarray(mask, dtype=bool)[..., None], 3, axis=2).astype(np.uint8) * 255


def hstack_with_gaps(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Equal-height [H,W,3] panels -> one [H, sum(W) + gaps, 3] array, grey gaps."""
    gap = np.full((panels[0].shape[0], _GAP, 3), 128, dtype=np.uint8)
    pieces = [piece for panel in panels for piece in (panel, gap)][:-1]
    return np.concatenate(pieces, axis=1)


def with_caption(rgb: np.ndarray, text: str, size: float | None = None) -> np.ndarray:
    """Put a black strip with ``text`` (Pillow's default font, white; ``size`` in pixels, or the
    font's own small size) above ``rgb`` [H,W,3]."""
    font = ImageFont.load_default() if size is None else ImageFont.load_default(size)
    text_height = font.getbbox("Ay")[3]  # fixed, so every caption strip has the same height
    strip = Image.new("RGB", (rgb.shape[1], text_height + 6))
    ImageDraw.Draw(strip).text((3, 3), text, fill=(255, 255, 255), font=font)
    return np.concatenate([np.asarray(strip), rgb], axis=0)


def result_panel(
    image_rgb: np.ndarray,
    anomaly_map: np.ndarray | torch.Tensor,
    mask: np.ndarray | None = None,
    score: float | None = None,
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """[image | overlay | mask] side by side under a caption (title and score) -> uint8
    [H + caption, 3W + gaps, 3]. Without a mask the third panel is the plain heatmap, so
    panels of one size can be mixed in a GIF."""
    third = heatmap_rgb(anomaly_map, vmin, vmax) if mask is None else _mask_rgb(mask)
    panels = [image_rgb, overlay(image_rgb, anomaly_map, vmin=vmin, vmax=vmax, mask=mask), third]
    caption = title if score is None else f"{title}  score {score:.3f}".strip()
    return with_caption(hstack_with_gaps(panels), caption)


def _shrink(frame: Image.Image, max_side: int | None) -> Image.Image:
    """Downscale (aspect kept) so that the longer side is at most ``max_side``."""
    if max_side is None or max(frame.size) <= max_side:
        return frame
    factor = max_side / max(frame.size)
    size = (max(1, round(frame.width * factor)), max(1, round(frame.height * factor)))
    return frame.resize(size, Image.Resampling.LANCZOS)


def _shared_palette(frames: Sequence[Image.Image]) -> Image.Image:
    """A 256-colour palette image fitted to (up to 16 of) the frames stacked together."""
    step = max(1, math.ceil(len(frames) / 16))
    sample = np.concatenate([np.asarray(frame) for frame in frames[::step]], axis=0)
    return Image.fromarray(sample).quantize(colors=256, method=Image.Quantize.MEDIANCUT)


def save_gif(
    path: str | os.PathLike,
    frames: Sequence[np.ndarray],
    duration_ms: int = 600,
    max_side: int | None = None,
) -> Path:
    """Write uint8 [H,W,3] frames (all one size) as a GIF that loops forever, atomically.

    Frames share one palette without dithering, which keeps the file small and the
    colours steady. Pillow merges identical consecutive frames into one longer frame.
    """
    if not frames:
        raise FAPMError("a GIF needs at least one frame")
    for frame in frames:
        _check_rgb(frame)
        if frame.shape != frames[0].shape:
            raise FAPMError(f"GIF frames differ in size: {frame.shape} and {frames[0].shape}")
    pictures = [_shrink(Image.fromarray(frame), max_side) for frame in frames]
    palette = _shared_palette(pictures)
    indexed = [p.quantize(palette=palette, dither=Image.Dither.NONE) for p in pictures]

    def write(tmp: Path) -> None:
        indexed[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=indexed[1:],
            duration=duration_ms,
            loop=0,
        )

    return write_with_atomic(path, write)


def _show_figures_in_ipython() -> None:
    """Inside IPython, render bare Figures as PNG. The inline backend registers this only
    once pyplot has made a figure; an existing registration is left alone."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return
    from IPython.core.pylabtools import print_figure
    from matplotlib.figure import Figure

    png = shell.display_formatter.formatters["image/png"]
    try:
        png.lookup_by_type(Figure)
    except KeyError:
        png.for_type(Figure, lambda figure: print_figure(figure, "png"))


def plot_gallery(
    items: Sequence[dict],
    ncols: int = 4,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """Grid of overlays for a notebook; each item has ``image`` [H,W,3] uint8, ``map`` [H,W],
    ``mask`` [H,W] or None (outlined) and ``title``.

    Returns a ``matplotlib.figure.Figure`` that is not registered with pyplot (no duplicate
    display, nothing to close): show it as a cell's result or with ``display(fig)``, or
    write it with ``fig.savefig``.
    """
    from matplotlib.figure import Figure

    _show_figures_in_ipython()
    if not items:
        raise FAPMError("plot_gallery needs at least one item")
    ncols = max(1, min(ncols, len(items)))
    nrows = math.ceil(len(items) / ncols)
    figure = Figure(figsize=(3 * ncols, 3.2 * nrows), layout="constrained")
    for index, axes in enumerate(figure.subplots(nrows, ncols, squeeze=False).flat):
        axes.set_axis_off()
        if index < len(items):
            item = items[index]
            axes.imshow(
                overlay(item["image"], item["map"], vmin=vmin, vmax=vmax, mask=item.get("mask"))
            )
            axes.set_title(item.get("title", ""), fontsize=9)
    return figure


#: Calibrated overlays: the normalised pixel score (0.5 = the pixel threshold) on one fixed
#: 0..1 colour scale; the colour fades in from ``FADE_FROM`` and is fully on (``alpha``) at the threshold.
FADE_FROM = 0.2
_BAR_WIDTH, _BAR_LABELS = 14, 62


def calibrated_overlay(
    image_rgb: np.ndarray,
    score_map: np.ndarray | torch.Tensor,
    mask: np.ndarray | None = None,
    caption: str = "",
    alpha: float = 0.6,
    cmap: str = "jet",
    truth: np.ndarray | None = None,
) -> np.ndarray:
    """Overlay of normalised scores ``score_map`` [H,W] in [0, 1] (0.5 at the threshold) on a
    fixed scale, the predicted ``mask`` outlined in white (and a ground-truth mask ``truth`` in
    green), a colour bar on the right and ``caption`` above: uint8 [caption + H, W + bar, 3].
    Below ``FADE_FROM`` the image shows through untouched, so a normal part looks clean
    whatever its own maximum."""
    _check_rgb(image_rgb)
    scores = np.clip(_as_float_map(score_map), 0.0, 1.0)
    _check_same_size(image_rgb, scores, "score map")
    heat = heatmap_rgb(scores, 0.0, 1.0, cmap).astype(np.float32)
    weight = (alpha * np.clip((scores - FADE_FROM) / (0.5 - FADE_FROM), 0.0, 1.0))[..., None]
    result = np.clip((1 - weight) * image_rgb + weight * heat, 0, 255).round().astype(np.uint8)
    if truth is not None:
        _check_same_size(image_rgb, np.asarray(truth), "ground-truth mask")
        result[_outline(truth)] = TRUTH_RGB
    if mask is not None:
        _check_same_size(image_rgb, np.asarray(mask), "mask")
        result[_outline(mask)] = OUTLINE_RGB
    return with_caption(np.concatenate([result, _colour_bar(result.shape[0], cmap)], axis=1), caption)


def _colour_bar(height: int, cmap: str) -> np.ndarray:
    """[height, bar + labels, 3]: the 0..1 scale (1 at the top), labelled 0, 0.5 (threshold), 1."""
    from matplotlib import colormaps

    values = np.linspace(1.0, 0.0, height)
    bar = (colormaps[cmap](values)[:, :3] * 255).round().astype(np.uint8)
    strip = Image.new("RGB", (_BAR_WIDTH + _BAR_LABELS, height), (0, 0, 0))
    strip.paste(Image.fromarray(np.repeat(bar[:, None], _BAR_WIDTH, axis=1)), (0, 0))
    draw, font = ImageDraw.Draw(strip), ImageFont.load_default()
    for value, label in ((1.0, "1"), (0.5, "0.5 thr"), (0.0, "0")):
        y = int(round((1 - value) * (height - 1)))
        draw.line([(0, y), (_BAR_WIDTH + 2, y)], fill=(255, 255, 255))
        draw.text((_BAR_WIDTH + 4, min(max(0, y - 5), height - 11)), label, fill=(255, 255, 255), font=font)
    return np.asarray(strip)
