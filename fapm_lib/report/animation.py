"""An animated GIF of a fitted model's test predictions: image | heatmap overlay | mask per frame.

Every frame uses one colour scale (the smallest and largest map value over all frames), so
colours compare across frames; the caption names the frame, defect type, file and score. The
file stays small: tiles are downscaled before the caption is drawn, frames are limited and
share one palette; if the GIF still exceeds ``max_bytes``, smaller tiles are tried.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.mvtec import MVTecDataset
from ..errors import ConfigError
from .viz import denormalize, result_panel, save_gif

MAX_GIF_BYTES = 2_000_000
#: Tile sides (pixels) tried in turn until the GIF fits ``max_bytes``.
TILE_SIDES = (160, 128, 96, 64)


def pick_frames(n_items: int, max_frames: int) -> list[int]:
    """Up to ``max_frames`` indices spread evenly over ``range(n_items)`` (all when they fit)."""
    if max_frames < 1:
        raise ConfigError(f"--max-frames {max_frames}: must be >= 1")
    if n_items <= max_frames:
        return list(range(n_items))
    return [i * n_items // max_frames for i in range(max_frames)]


def _resize_map(values: torch.Tensor, side: int, mode: str) -> torch.Tensor:
    """``[H, W] -> [side, side]`` float (bilinear with antialias, or nearest for masks)."""
    kwargs = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(values[None, None].float(), size=(side, side), mode=mode, **kwargs)[0, 0]


def _tile_rgb(rgb: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((side, side), Image.Resampling.LANCZOS))


@torch.inference_mode()
def predict_frames(model, dataset: MVTecDataset, indices: Sequence[int]) -> list[dict]:
    """Predictions for some test items: dicts with ``rgb`` [S, S, 3] uint8, ``map`` [S, S],
    ``mask`` [S, S] bool or None, ``score``, ``defect_type``, ``name``."""
    items = [dataset[i] for i in indices]
    images = torch.stack([it["image"] for it in items])
    preds = [model.predict(chunk.to(model.device)) for chunk in images.split(model.config.batch_size)]
    maps = torch.cat([p.anomaly_map.cpu() for p in preds])
    scores = torch.cat([p.pred_score.cpu() for p in preds])
    mean, std = dataset.transform.mean, dataset.transform.std
    return [{"rgb": denormalize(it["image"], mean, std), "map": maps[j],
             "mask": it["mask"] if dataset.has_masks else None, "score": float(scores[j]),
             "defect_type": it["defect_type"], "name": Path(it["path"]).name} for j, it in enumerate(items)]


def render_frames(frames: list[dict], side: int) -> list[np.ndarray]:
    """``result_panel`` images of ``side``-pixel tiles on one colour scale -> uint8 ``[H, W, 3]`` each."""
    vmin = min(float(f["map"].min()) for f in frames)
    vmax = max(float(f["map"].max()) for f in frames)
    out = []
    for j, f in enumerate(frames):
        mask = None if f["mask"] is None else _resize_map(f["mask"], side, "nearest").numpy() > 0.5
        title = f"{j + 1}/{len(frames)} {f['defect_type']} {f['name']}"
        out.append(result_panel(_tile_rgb(f["rgb"], side), _resize_map(f["map"], side, "bilinear").numpy(),
                                mask, f["score"], title, vmin, vmax))
    return out


def make_gif(model, dataset: MVTecDataset, output: str | Path, max_frames: int = 24,
             duration_ms: int = 700, max_bytes: int = MAX_GIF_BYTES) -> Path:
    """Animate up to ``max_frames`` test images of ``dataset`` (spread over all defect types)
    with ``model``'s heatmaps into a looping GIF at ``output``; return its path."""
    frames = predict_frames(model, dataset, pick_frames(len(dataset), max_frames))
    path = Path(output)
    for side in TILE_SIDES:
        save_gif(path, render_frames(frames, side), duration_ms=duration_ms)
        if path.stat().st_size <= max_bytes:
            break
    return path
