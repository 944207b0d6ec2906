"""Small procedural tools: colours, value and fractal noise, blobs, strokes, object scenes."""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .shading import F32, Light, Scene, pixel_grid


def lerp(lo: float, hi: float, t: float) -> float:
    return float(lo + (hi - lo) * t)


def smoothstep(e0: float, e1: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def blend(layer: np.ndarray, target: np.ndarray | float, alpha: np.ndarray) -> np.ndarray:
    """``layer`` moved towards ``target`` by ``alpha`` ([H, W]); same shape as layer."""
    a = alpha[..., None] if layer.ndim == 3 else alpha
    return (layer + (target - layer) * a).astype(F32)


def rgb(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=F32)


def jitter_rgb(rng: np.random.Generator, base: Sequence[float], sigma: float) -> np.ndarray:
    """Colour (3,) near ``base``: brightness varies by about 2 sigma, hue only by sigma / 2."""
    bright = 1.0 + 2.0 * float(rng.normal(0.0, sigma))
    return np.clip(rgb(base) * bright + rng.normal(0.0, sigma / 2, 3).astype(F32), 0.0, 1.0)


@functools.lru_cache(maxsize=64)
def _upsampler(size: int, cell: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Cubic B-spline taps from a lattice of spacing ``cell`` px: indices [4, size],
    weights [4, size] float32 and the lattice length."""
    n = int(np.ceil(size / cell)) + 4
    t = np.arange(size) / cell + 1.5
    base = np.floor(t).astype(np.intp)
    f = t - base
    weights = np.stack([(1 - f) ** 3, 3 * f ** 3 - 6 * f ** 2 + 4,
                        -3 * f ** 3 + 3 * f ** 2 + 3 * f + 1, f ** 3]).astype(F32) / 6
    index = np.stack([base - 1 + k for k in range(4)])
    index.flags.writeable = False
    weights.flags.writeable = False
    return index, weights, n


def value_noise(rng: np.random.Generator, size: int, cell: float,
                cell_x: float | None = None) -> np.ndarray:
    """Smooth value noise with features of about ``cell`` px (``cell_x`` along x if given),
    [size, size] float32, zero mean and unit std."""
    cy, cx = max(float(cell), 1.0), max(float(cell if cell_x is None else cell_x), 1.0)
    up_y = _upsampler(size, cy) if cy > 1.0 else None
    up_x = _upsampler(size, cx) if cx > 1.0 else None
    f = rng.standard_normal((size if up_y is None else up_y[2], size if up_x is None else up_x[2]),
                            dtype=F32)
    if up_y is not None:      # separable 4-tap gathers: no BLAS, no thread start-up
        idx, w, _ = up_y
        f = sum(w[k][:, None] * f[idx[k], :] for k in range(4))
    if up_x is not None:
        idx, w, _ = up_x
        f = sum(f[:, idx[k]] * w[k][None, :] for k in range(4))
    return ((f - f.mean()) / (f.std() + 1e-6)).astype(F32)


def fbm(rng: np.random.Generator, size: int, cell: float, octaves: int = 4) -> np.ndarray:
    """Fractal noise: octaves of :func:`value_noise` halving in scale, [size, size] float32, unit std."""
    total = sum(0.5 ** k * value_noise(rng, size, cell / 2 ** k) for k in range(octaves))
    return ((total - total.mean()) / (total.std() + 1e-6)).astype(F32)


def profile(rng: np.random.Generator, coord: np.ndarray, cell: float) -> np.ndarray:
    """1-D noise read along a coordinate map (streaks across it), same shape, float32 unit std."""
    lo = float(np.floor(coord.min())) - 2.0
    n = int(np.ceil(coord.max() - lo)) + 3
    line = ndimage.gaussian_filter1d(rng.standard_normal(n), max(cell, 0.3), mode="wrap")
    line = (line - line.mean()) / (line.std() + 1e-9)
    return np.interp(coord.ravel(), lo + np.arange(n), line).reshape(coord.shape).astype(F32)


def _bbox(size: int, cy: float, cx: float, reach: float) -> tuple[slice, slice] | None:
    """Slices of the square of half-side ``reach`` around (cy, cx), or None if off the image."""
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, size)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, size)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def blob(rng: np.random.Generator, size: int, center: tuple[float, float], radius: float,
         rough: float = 0.25, soft: float = 1.0) -> np.ndarray:
    """Irregular round footprint with a soft rim, coverage [H, W] float32 in [0, 1]."""
    k = np.arange(2, 8)
    amp = rng.normal(0.0, rough, k.size) / k
    phase = rng.uniform(0.0, 2 * np.pi, k.size)
    out = np.zeros((size, size), F32)
    box = _bbox(size, center[0], center[1], radius * (1 + np.abs(amp).sum()) + soft + 2)
    if box is None:
        return out
    y, x = pixel_grid(size)
    dy, dx = y[box] - center[0], x[box] - center[1]
    theta = np.arctan2(dy, dx)
    r = radius * (1.0 + sum(a * np.cos(kk * theta + p) for a, kk, p in zip(amp, k, phase)))
    out[box] = np.clip((np.maximum(r, 0.3) - np.hypot(dy, dx)) / soft + 0.5, 0.0, 1.0)
    return out


def walk(rng: np.random.Generator, start: tuple[float, float], heading: float, length: float,
         step: float = 2.0, turn: float = 0.05, jag: float = 0.0) -> np.ndarray:
    """Random-walk polyline from ``start`` (y, x): [N, 2] float points; ``turn`` bends it
    smoothly, ``jag`` makes it zig-zag."""
    n = max(2, int(length / step) + 1)
    h = heading + np.cumsum(rng.normal(0.0, turn, n - 1)) + rng.normal(0.0, jag, n - 1)
    steps = np.stack([np.sin(h), np.cos(h)], axis=1) * step
    return np.vstack([np.asarray(start, float)[None], start + np.cumsum(steps, axis=0)])


def stroke(size: int, pts: np.ndarray, widths: np.ndarray | float,
           soft: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased polyline of per-segment ``widths`` (px): coverage and a tube profile
    (1 on the axis, 0 at the rim), each [H, W] float32."""
    widths = np.broadcast_to(np.asarray(widths, float), (len(pts) - 1,))
    alpha = np.zeros((size, size), F32)
    tube = np.zeros((size, size), F32)
    y, x = pixel_grid(size)
    for (y0, x0), (y1, x1), w in zip(pts[:-1], pts[1:], widths):
        half = w / 2.0
        reach = half + soft + 1.0
        box = _bbox(size, (y0 + y1) / 2, (x0 + x1) / 2, max(abs(y1 - y0), abs(x1 - x0)) / 2 + reach)
        if box is None:
            continue
        py, px = y[box], x[box]
        ey, ex = y1 - y0, x1 - x0
        t = np.clip(((py - y0) * ey + (px - x0) * ex) / max(ey * ey + ex * ex, 1e-9), 0.0, 1.0)
        d = np.hypot(py - (y0 + t * ey), px - (x0 + t * ex))
        alpha[box] = np.maximum(alpha[box], np.clip((half - d) / soft + 0.5, 0.0, 1.0))
        tube[box] = np.maximum(tube[box], np.clip(1.0 - (d / (half + soft)) ** 2, 0.0, 1.0))
    return alpha, tube


def taper(n: int, start: float = 0.35) -> np.ndarray:
    """Width profile [n] rising from ``start`` to 1 mid-way and back (cracks, threads)."""
    return start + (1.0 - start) * np.sin(np.linspace(0.0, np.pi, n)) ** 0.6


def pick(rng: np.random.Generator, where: np.ndarray, margin: float = 0.0) -> tuple[float, float]:
    """A random point (y, x) among the True pixels of ``where`` [H, W], ``margin`` px from the border."""
    size = where.shape[0]
    m = int(margin)
    allowed = np.zeros_like(where, dtype=bool)
    allowed[m:size - m, m:size - m] = where[m:size - m, m:size - m]
    idx = np.flatnonzero(allowed)
    if idx.size == 0:
        idx = np.arange(where.size)
    yy, xx = divmod(int(idx[rng.integers(idx.size)]), size)
    return yy + float(rng.uniform(-0.5, 0.5)), xx + float(rng.uniform(-0.5, 0.5))


def object_scene(obj: tuple[np.ndarray, np.ndarray, np.ndarray], bg: tuple[np.ndarray, np.ndarray, np.ndarray],
                 alpha: np.ndarray, light: Light, region: np.ndarray, aux: dict[str, Any]) -> Scene:
    """Object maps (albedo, height, gloss) laid over background maps by coverage ``alpha`` [H, W]."""
    aux = dict(aux, obj=obj, bg=bg, alpha=alpha)
    layers = [blend(b, o, alpha) for o, b in zip(obj, bg)]
    return Scene(layers[0], layers[1], layers[2], light, region, aux)


def reveal_background(scene: Scene, alpha: np.ndarray) -> None:
    """Remove material where ``alpha`` [H, W] > 0: the background shows through."""
    bg_albedo, bg_height, bg_gloss = scene.aux["bg"]
    scene.albedo = blend(scene.albedo, bg_albedo, alpha)
    scene.height = blend(scene.height, bg_height, alpha)
    scene.gloss = blend(scene.gloss, bg_gloss, alpha)


def matte_background(rng: np.random.Generator, size: int, base: Sequence[float]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matte tray / conveyor maps: (albedo [H, W, 3], height [H, W], gloss [H, W])."""
    mott = fbm(rng, size, size / 4, 3)
    grain = value_noise(rng, size, 1.2)
    albedo = jitter_rgb(rng, base, 0.01) * (1.0 + 0.07 * mott + 0.04 * grain)[..., None]
    height = (0.25 * grain).astype(F32)
    return albedo.astype(F32), height, np.full((size, size), 0.03, F32)
