"""Defects shared by several categories: scratch, crack, stain (they edit a scene in place)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .materials import blend, blob, lerp, pick, rgb, stroke, taper, walk
from .shading import F32, Scene


def surface_scratch(scene: Scene, rng: np.random.Generator, sev: float, where: np.ndarray,
                    length: tuple[float, float], width: tuple[float, float],
                    pale: Sequence[float]) -> np.ndarray:
    """Thin, nearly straight groove that catches light (or shadows); returns its footprint [H, W] bool."""
    size = scene.size
    start = pick(rng, where, margin=size * 0.1)
    pts = walk(rng, start, rng.uniform(0, 2 * np.pi), lerp(*length, sev) * size, turn=0.03)
    a, tube = stroke(size, pts, lerp(*width, sev) * taper(len(pts) - 1, 0.5))
    a *= where
    c = lerp(0.2, 0.85, sev)
    target = rgb(pale) if rng.uniform() < 0.6 else scene.albedo * 0.35
    scene.albedo = blend(scene.albedo, target, a * c)
    scene.height = (scene.height - lerp(0.3, 1.2, sev) * tube * a).astype(F32)
    return a > 0


def paint_crack(scene: Scene, rng: np.random.Generator, sev: float, start: tuple[float, float],
                heading: float, length: tuple[float, float], width: tuple[float, float],
                where: np.ndarray, dark: float = 0.25, jag: float = 0.35) -> np.ndarray:
    """Jagged dark groove, optionally branching; returns its footprint [H, W] bool."""
    size = scene.size
    pts = walk(rng, start, heading, lerp(*length, sev) * size, step=2.0, turn=0.08, jag=jag)
    w = lerp(*width, sev)
    a, tube = stroke(size, pts, w * taper(len(pts) - 1))
    if sev > 0.5 and len(pts) > 6:
        k = int(rng.integers(2, len(pts) - 3))
        branch = walk(rng, tuple(pts[k]), heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0),
                      0.4 * lerp(*length, sev) * size, step=2.0, turn=0.08, jag=jag)
        a2, tube2 = stroke(size, branch, 0.7 * w * taper(len(branch) - 1, 0.2))
        a, tube = np.maximum(a, a2), np.maximum(tube, tube2)
    a *= where
    scene.albedo = blend(scene.albedo, scene.albedo * dark, a * lerp(0.45, 0.95, sev))
    scene.height = (scene.height - 1.8 * tube * a).astype(F32)
    return a > 0


def paint_stain(scene: Scene, rng: np.random.Generator, sev: float, where: np.ndarray,
                radius: tuple[float, float], colours: Sequence[Sequence[float]],
                strength: tuple[float, float]) -> np.ndarray:
    """Soft-edged liquid mark with a darker tide line; returns its footprint [H, W] bool."""
    size = scene.size
    r = lerp(*radius, sev) * size
    a = blob(rng, size, pick(rng, where, margin=r * 0.5), r, rough=0.3, soft=max(1.0, 0.3 * r))
    a *= where
    tide = 4.0 * a * (1.0 - a)
    col = rgb(colours[int(rng.integers(len(colours)))])
    k = lerp(*strength, sev) * np.clip(0.7 * a + 0.6 * tide, 0.0, 1.0)
    scene.albedo = blend(scene.albedo, scene.albedo * col, k)
    scene.gloss = (scene.gloss + 0.15 * a).astype(F32)
    return a > 0.02
