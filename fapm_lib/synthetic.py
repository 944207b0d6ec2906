"""A built-in, generated anomaly-detection dataset in the exact MVTec AD layout.

Six categories (three textures, three roughly aligned objects) are rendered from
procedural albedo, height and gloss maps, lit with a random directional light, softened
by a small optical blur and given sensor noise, so ImageNet features see natural-looking
images. A defect image is the good image of its own random draw with one defect painted
into those maps; its mask covers exactly the pixels the defect changed: outside the mask
the written image is byte-identical to the defect-free rendering.

Layout written (MVTec AD's)::

    <output>/<category>/train/good/000.png
    <output>/<category>/test/good/000.png
    <output>/<category>/test/<defect>/000.png
    <output>/<category>/ground_truth/<defect>/000_mask.png

Every image depends only on ``(seed, category, split, defect, index, size)``, so the
same seed gives byte-identical files whatever the generation order. Only numpy, scipy
and Pillow are used (matplotlib only inside :func:`plot_overview`).
"""
from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from .atomic import write_text_atomic
from .errors import DataError

__all__ = [
    "CATEGORIES",
    "VERSION",
    "CategorySpec",
    "SyntheticSample",
    "ensure_dataset",
    "generate_category",
    "generate_dataset",
    "plot_overview",
    "render_sample",
]

VERSION = 1                 # bump whenever a rendering changes: stale sets are regenerated
MIN_SIZE = 64
MARKER = ".complete"
_CAMERA = 1.5               # camera height above the image centre, in image sizes
_CHANGE = 1.0 / 255.0       # a pixel counts as changed from one grey level on
_SPREAD = 3                 # px a painted change may spread (normals + optical blur)
_TRIES = 8                  # draws of a defect before it must be visible
N_TRAIN, N_TEST_GOOD, N_PER_DEFECT = 60, 20, 10   # images per folder by default

F32 = np.float32


# ---------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class CategorySpec:
    """One generated category: its kind, its defect types and what they look like."""

    name: str
    kind: str                              # "texture" | "object"
    defects: tuple[str, ...]
    description: str
    defect_notes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered sample.

    image: [H, W, 3] uint8, as written to disk.
    clean: [H, W, 3] uint8, the same draw without the defect (``image`` for good samples).
    mask:  [H, W] uint8 in {0, 255}, or None for good samples.
    """

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray | None


# ---------------------------------------------------------------------------- scene + light


@dataclass(frozen=True)
class _Light:
    """Directional light, camera falloff and sensor settings for one image."""

    direction: np.ndarray        # (3,) unit vector (x, y, z) towards the light, y down
    ambient: float
    diffuse: float
    specular: float
    shininess: float
    gain: float
    ramp: tuple[float, float]    # linear illumination slope along (x, y)
    vignette: float
    tint: np.ndarray             # (3,) white-balance error
    blur: float                  # optical blur sigma, px
    noise: float                 # sensor noise sigma, in [0, 1] units


@dataclass
class _Scene:
    """Material maps of one image; defects edit them in place.

    albedo: [H, W, 3] float32 in [0, 1]; height: [H, W] float32 (px); gloss: [H, W] float32.
    region: [H, W] bool, where a defect may be placed. aux: category-specific geometry.
    """

    albedo: np.ndarray
    height: np.ndarray
    gloss: np.ndarray
    light: _Light
    region: np.ndarray
    aux: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.height.shape[0])

    def copy(self) -> _Scene:
        """Copy of the editable maps; region and aux are shared (read only)."""
        return _Scene(self.albedo.copy(), self.height.copy(), self.gloss.copy(),
                      self.light, self.region, self.aux)


GoodFn = Callable[[np.random.Generator, int], _Scene]
DefectFn = Callable[[_Scene, np.random.Generator, float], np.ndarray]


def _draw_light(rng: np.random.Generator, elevation: tuple[float, float] = (35, 55),
                azimuth: tuple[float, float] = (200, 250), specular: float = 1.0,
                shininess: tuple[float, float] = (20, 40)) -> _Light:
    """Random light from the given ranges (degrees), plus camera and sensor jitter."""
    el = np.deg2rad(rng.uniform(*elevation))
    az = np.deg2rad(rng.uniform(*azimuth))
    direction = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], F32)
    ambient = float(rng.uniform(0.28, 0.38))
    return _Light(
        direction=direction, ambient=ambient, diffuse=1.0 - ambient, specular=specular,
        shininess=float(rng.uniform(*shininess)), gain=float(rng.uniform(0.92, 1.06)),
        ramp=(float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08))),
        vignette=float(rng.uniform(0.04, 0.12)),
        tint=(1.0 + rng.normal(0.0, 0.01, 3)).astype(F32),
        blur=float(rng.uniform(0.45, 0.75)), noise=float(rng.uniform(1.2, 2.8)) / 255.0)


def _shade(scene: _Scene) -> np.ndarray:
    """Lit and optically blurred image, [H, W, 3] float32 (not yet clipped)."""
    lt, size = scene.light, scene.size
    y, x = _grid(size)
    gy, gx = np.gradient(scene.height)
    nz = 1.0 / np.sqrt(1.0 + gx * gx + gy * gy)
    nx, ny = -gx * nz, -gy * nz
    lx, ly, lz = (float(v) for v in lt.direction)
    lambert = np.maximum(nx * lx + ny * ly + nz * lz, 0.0)
    shade = lt.ambient + lt.diffuse * lambert / lz
    c = size / 2.0
    vx, vy, vz = c - x, c - y, _CAMERA * size - scene.height
    vn = 1.0 / np.sqrt(vx * vx + vy * vy + vz * vz)
    hx, hy, hz = lx + vx * vn, ly + vy * vn, lz + vz * vn
    hn = 1.0 / np.sqrt(hx * hx + hy * hy + hz * hz)
    ndoth = np.maximum((nx * hx + ny * hy + nz * hz) * hn, 0.0)
    spec = lt.specular * scene.gloss * ndoth ** lt.shininess
    illum = lt.gain * (1.0 + lt.ramp[0] * (x / size - 0.5) + lt.ramp[1] * (y / size - 0.5))
    illum = illum * (1.0 - lt.vignette * ((x - c) ** 2 + (y - c) ** 2) / (2 * c * c))
    img = (scene.albedo * shade[..., None] + spec[..., None]) * (illum[..., None] * lt.tint)
    return ndimage.gaussian_filter(img.astype(F32), (lt.blur, lt.blur, 0), mode="nearest")


def _sensor_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian sensor noise, mostly luminance, [H, W, 3] float32."""
    shared = rng.standard_normal((size, size, 1), dtype=F32)
    chroma = rng.standard_normal((size, size, 3), dtype=F32)
    return (sigma * (0.8 * shared + 0.45 * chroma)).astype(F32)


def _quantize(img: np.ndarray) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- small tools


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(y, x)``, each [size, size] float32, read only."""
    c = np.arange(size, dtype=F32)
    y, x = np.meshgrid(c, c, indexing="ij")
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x


def _lerp(lo: float, hi: float, t: float) -> float:
    return float(lo + (hi - lo) * t)


def _smoothstep(e0: float, e1: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blend(layer: np.ndarray, target: np.ndarray | float, alpha: np.ndarray) -> np.ndarray:
    """``layer`` moved towards ``target`` by ``alpha`` ([H, W]); same shape as layer."""
    a = alpha[..., None] if layer.ndim == 3 else alpha
    return (layer + (target - layer) * a).astype(F32)


def _rgb(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=F32)


def _jitter_rgb(rng: np.random.Generator, base: Sequence[float], sigma: float) -> np.ndarray:
    """Colour (3,) near ``base``: brightness varies by about 2 sigma, hue only by sigma / 2."""
    bright = 1.0 + 2.0 * float(rng.normal(0.0, sigma))
    return np.clip(_rgb(base) * bright + rng.normal(0.0, sigma / 2, 3).astype(F32), 0.0, 1.0)


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


def _noise(rng: np.random.Generator, size: int, cell: float,
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


def _fbm(rng: np.random.Generator, size: int, cell: float, octaves: int = 4) -> np.ndarray:
    """Fractal noise: octaves of :func:`_noise` halving in scale, [size, size] float32, unit std."""
    total = sum(0.5 ** k * _noise(rng, size, cell / 2 ** k) for k in range(octaves))
    return ((total - total.mean()) / (total.std() + 1e-6)).astype(F32)


def _profile(rng: np.random.Generator, coord: np.ndarray, cell: float) -> np.ndarray:
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


def _blob(rng: np.random.Generator, size: int, center: tuple[float, float], radius: float,
          rough: float = 0.25, soft: float = 1.0) -> np.ndarray:
    """Irregular round footprint with a soft rim, coverage [H, W] float32 in [0, 1]."""
    k = np.arange(2, 8)
    amp = rng.normal(0.0, rough, k.size) / k
    phase = rng.uniform(0.0, 2 * np.pi, k.size)
    out = np.zeros((size, size), F32)
    box = _bbox(size, center[0], center[1], radius * (1 + np.abs(amp).sum()) + soft + 2)
    if box is None:
        return out
    y, x = _grid(size)
    dy, dx = y[box] - center[0], x[box] - center[1]
    theta = np.arctan2(dy, dx)
    r = radius * (1.0 + sum(a * np.cos(kk * theta + p) for a, kk, p in zip(amp, k, phase)))
    out[box] = np.clip((np.maximum(r, 0.3) - np.hypot(dy, dx)) / soft + 0.5, 0.0, 1.0)
    return out


def _walk(rng: np.random.Generator, start: tuple[float, float], heading: float, length: float,
          step: float = 2.0, turn: float = 0.05, jag: float = 0.0) -> np.ndarray:
    """Random-walk polyline from ``start`` (y, x): [N, 2] float points; ``turn`` bends it
    smoothly, ``jag`` makes it zig-zag."""
    n = max(2, int(length / step) + 1)
    h = heading + np.cumsum(rng.normal(0.0, turn, n - 1)) + rng.normal(0.0, jag, n - 1)
    steps = np.stack([np.sin(h), np.cos(h)], axis=1) * step
    return np.vstack([np.asarray(start, float)[None], start + np.cumsum(steps, axis=0)])


def _stroke(size: int, pts: np.ndarray, widths: np.ndarray | float,
            soft: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased polyline of per-segment ``widths`` (px): coverage and a tube profile
    (1 on the axis, 0 at the rim), each [H, W] float32."""
    widths = np.broadcast_to(np.asarray(widths, float), (len(pts) - 1,))
    alpha = np.zeros((size, size), F32)
    tube = np.zeros((size, size), F32)
    y, x = _grid(size)
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


def _taper(n: int, start: float = 0.35) -> np.ndarray:
    """Width profile [n] rising from ``start`` to 1 mid-way and back (cracks, threads)."""
    return start + (1.0 - start) * np.sin(np.linspace(0.0, np.pi, n)) ** 0.6


def _pick(rng: np.random.Generator, where: np.ndarray, margin: float = 0.0) -> tuple[float, float]:
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


def _object_scene(obj: tuple[np.ndarray, np.ndarray, np.ndarray], bg: tuple[np.ndarray, np.ndarray, np.ndarray],
                  alpha: np.ndarray, light: _Light, region: np.ndarray, aux: dict[str, Any]) -> _Scene:
    """Object maps (albedo, height, gloss) laid over background maps by coverage ``alpha`` [H, W]."""
    aux = dict(aux, obj=obj, bg=bg, alpha=alpha)
    layers = [_blend(b, o, alpha) for o, b in zip(obj, bg)]
    return _Scene(layers[0], layers[1], layers[2], light, region, aux)


def _reveal_background(scene: _Scene, alpha: np.ndarray) -> None:
    """Remove material where ``alpha`` [H, W] > 0: the background shows through."""
    bg_albedo, bg_height, bg_gloss = scene.aux["bg"]
    scene.albedo = _blend(scene.albedo, bg_albedo, alpha)
    scene.height = _blend(scene.height, bg_height, alpha)
    scene.gloss = _blend(scene.gloss, bg_gloss, alpha)


def _matte_background(rng: np.random.Generator, size: int, base: Sequence[float]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matte tray / conveyor maps: (albedo [H, W, 3], height [H, W], gloss [H, W])."""
    mott = _fbm(rng, size, size / 4, 3)
    grain = _noise(rng, size, 1.2)
    albedo = _jitter_rgb(rng, base, 0.01) * (1.0 + 0.07 * mott + 0.04 * grain)[..., None]
    height = (0.25 * grain).astype(F32)
    return albedo.astype(F32), height, np.full((size, size), 0.03, F32)


def _surface_scratch(scene: _Scene, rng: np.random.Generator, sev: float, where: np.ndarray,
                     length: tuple[float, float], width: tuple[float, float],
                     pale: Sequence[float]) -> np.ndarray:
    """Thin, nearly straight groove that catches light (or shadows); returns its footprint [H, W] bool."""
    size = scene.size
    start = _pick(rng, where, margin=size * 0.1)
    pts = _walk(rng, start, rng.uniform(0, 2 * np.pi), _lerp(*length, sev) * size, turn=0.03)
    a, tube = _stroke(size, pts, _lerp(*width, sev) * _taper(len(pts) - 1, 0.5))
    a *= where
    c = _lerp(0.2, 0.85, sev)
    target = _rgb(pale) if rng.uniform() < 0.6 else scene.albedo * 0.35
    scene.albedo = _blend(scene.albedo, target, a * c)
    scene.height = (scene.height - _lerp(0.3, 1.2, sev) * tube * a).astype(F32)
    return a > 0


def _crack(scene: _Scene, rng: np.random.Generator, sev: float, start: tuple[float, float],
           heading: float, length: tuple[float, float], width: tuple[float, float],
           where: np.ndarray, dark: float = 0.25, jag: float = 0.35) -> np.ndarray:
    """Jagged dark groove, optionally branching; returns its footprint [H, W] bool."""
    size = scene.size
    pts = _walk(rng, start, heading, _lerp(*length, sev) * size, step=2.0, turn=0.08, jag=jag)
    w = _lerp(*width, sev)
    a, tube = _stroke(size, pts, w * _taper(len(pts) - 1))
    if sev > 0.5 and len(pts) > 6:
        k = int(rng.integers(2, len(pts) - 3))
        branch = _walk(rng, tuple(pts[k]), heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0),
                       0.4 * _lerp(*length, sev) * size, step=2.0, turn=0.08, jag=jag)
        a2, tube2 = _stroke(size, branch, 0.7 * w * _taper(len(branch) - 1, 0.2))
        a, tube = np.maximum(a, a2), np.maximum(tube, tube2)
    a *= where
    scene.albedo = _blend(scene.albedo, scene.albedo * dark, a * _lerp(0.45, 0.95, sev))
    scene.height = (scene.height - 1.8 * tube * a).astype(F32)
    return a > 0


def _stain(scene: _Scene, rng: np.random.Generator, sev: float, where: np.ndarray,
           radius: tuple[float, float], colours: Sequence[Sequence[float]],
           strength: tuple[float, float]) -> np.ndarray:
    """Soft-edged liquid mark with a darker tide line; returns its footprint [H, W] bool."""
    size = scene.size
    r = _lerp(*radius, sev) * size
    a = _blob(rng, size, _pick(rng, where, margin=r * 0.5), r, rough=0.3, soft=max(1.0, 0.3 * r))
    a *= where
    tide = 4.0 * a * (1.0 - a)
    col = _rgb(colours[int(rng.integers(len(colours)))])
    k = _lerp(*strength, sev) * np.clip(0.7 * a + 0.6 * tide, 0.0, 1.0)
    scene.albedo = _blend(scene.albedo, scene.albedo * col, k)
    scene.gloss = (scene.gloss + 0.15 * a).astype(F32)
    return a > 0.02


# ---------------------------------------------------------------------------- fabric (texture)


def _fabric_good(rng: np.random.Generator, size: int) -> _Scene:
    """Denim-like 2/1 twill: indigo warp floats over off-white weft, with slubs and fading."""
    light = _draw_light(rng, elevation=(35, 50), specular=0.3, shininess=(8, 14))
    y, x = _grid(size)
    pitch = size / 42.0
    th = float(np.deg2rad(rng.uniform(-3, 3)))
    oy, ox = (float(t) for t in rng.uniform(0, 6 * pitch, 2))
    u = (np.cos(th) * x + np.sin(th) * y + ox) / pitch
    v = (-np.sin(th) * x + np.cos(th) * y + oy) / pitch
    i, j = np.floor(u), np.floor(v)
    a, b = u - i, v - j
    ii, jj = i.astype(np.int64), j.astype(np.int64)
    warp_top = ((ii + jj) % 3) != 0
    sa, sb = np.sin(np.pi * a), np.sin(np.pi * b)
    h_warp = np.sqrt(sa) * (0.85 + 0.15 * sb)
    h_weft = np.sqrt(sb) * (0.85 + 0.15 * sa)
    warp_gain = 1.0 + 0.08 * rng.standard_normal(512).astype(F32)
    weft_gain = 1.0 + 0.06 * rng.standard_normal(512).astype(F32)
    fibre_v = _noise(rng, size, 3 * pitch, 1.0)
    fibre_h = _noise(rng, size, 1.0, 3 * pitch)
    warp_col = _jitter_rgb(rng, (0.17, 0.25, 0.43), 0.008)
    weft_col = _jitter_rgb(rng, (0.62, 0.64, 0.66), 0.01)
    warp = warp_col * (warp_gain[ii % 512] * (0.78 + 0.22 * sa) * (1 + 0.10 * fibre_v))[..., None]
    weft = weft_col * (weft_gain[jj % 512] * (0.80 + 0.20 * sb) * (1 + 0.08 * fibre_h))[..., None]
    albedo = np.where(warp_top[..., None], warp, weft)
    albedo = albedo * (1.0 + 0.06 * _fbm(rng, size, size / 3, 3))[..., None]
    height = 1.4 * np.where(warp_top, h_warp, h_weft)
    gloss = np.full((size, size), 0.05, F32)
    return _Scene(albedo.astype(F32), height.astype(F32), gloss, light,
                  np.ones((size, size), bool), {"pitch": pitch, "warp": warp_col, "weft": weft_col})


def _fabric_hole(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Torn hole showing the dark backing, with frayed, lifted thread ends at its rim."""
    size = scene.size
    r = _lerp(0.015, 0.07, sev) * size
    a = _blob(rng, size, _pick(rng, scene.region, margin=r), r, rough=0.35, soft=0.8)
    fray = 4.0 * a * (1.0 - a)
    backing = _rgb((0.05, 0.05, 0.06)) * (1.0 + 0.3 * _noise(rng, size, 1.5))[..., None]
    scene.albedo = _blend(scene.albedo, backing, a)
    scene.height = (_blend(scene.height, -2.0, a) + 0.8 * fray).astype(F32)
    scene.gloss = _blend(scene.gloss, 0.0, a)
    return a > 0


def _fabric_stain(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Oil, tea or rust-coloured liquid stain soaked into the weave."""
    return _stain(scene, rng, sev, scene.region, radius=(0.04, 0.12),
                  colours=((0.55, 0.42, 0.25), (0.35, 0.35, 0.33), (0.75, 0.55, 0.25)),
                  strength=(0.12, 0.6))


def _fabric_thread(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Loose foreign thread lying on the cloth: a thin raised curve, sometimes of matching colour."""
    size = scene.size
    start = _pick(rng, scene.region, margin=size * 0.15)
    pts = _walk(rng, start, rng.uniform(0, 2 * np.pi), _lerp(0.12, 0.5, sev) * size, turn=0.15)
    a, tube = _stroke(size, pts, _lerp(1.0, 2.4, sev))
    if sev < 0.35:
        colour = scene.aux["warp"] * 1.35 if rng.uniform() < 0.5 else scene.aux["weft"] * 0.92
    else:
        colour = _rgb(((0.80, 0.15, 0.10), (0.95, 0.95, 0.90), (0.08, 0.08, 0.08),
                       (0.85, 0.70, 0.20))[int(rng.integers(4))])
    scene.albedo = _blend(scene.albedo, colour * (0.75 + 0.25 * tube)[..., None], a)
    scene.height = _blend(scene.height, 1.6 + 1.2 * tube, a)
    return a > 0


# ---------------------------------------------------------------------------- woodgrain (texture)


def _wood_maps(rng: np.random.Generator, size: int, angle: float, period: float,
               light_col: np.ndarray, dark_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plank-sawn grain running at ``angle`` degrees from vertical: (albedo [H, W, 3], height [H, W])."""
    y, x = _grid(size)
    th = np.deg2rad(angle)
    u = np.cos(th) * x - np.sin(th) * y          # across the grain
    v = np.sin(th) * x + np.cos(th) * y          # along the grain
    warp = _fbm(rng, size, size / 2, 3) * (0.012 * size) + _noise(rng, size, size / 12) * (0.003 * size)
    bend = float(rng.uniform(-0.25, 0.25)) * (v - size / 2) ** 2 / size
    t = (u + warp + bend) / period + 0.6 * _profile(rng, u / period, 1.5) + float(rng.uniform(0, 1))
    ring = t - np.floor(t)
    late = _smoothstep(0.6, 0.9, ring) * (1.0 - _smoothstep(0.93, 1.0, ring))
    streak = _profile(rng, u + 0.3 * warp, 0.8)
    pores = _smoothstep(1.8, 2.8, -_noise(rng, size, 6.0, 1.0))
    mott = _fbm(rng, size, size / 5, 3)
    tone = np.clip(0.55 * late + 0.12 * streak + 0.2, 0.0, 1.0)
    albedo = light_col + (dark_col - light_col) * tone[..., None]
    albedo = albedo * ((1.0 + 0.05 * mott) * (1.0 - 0.35 * pores))[..., None]
    height = -0.2 * late + 0.08 * streak - 0.4 * pores
    return albedo.astype(F32), height.astype(F32)


def _woodgrain_good(rng: np.random.Generator, size: int) -> _Scene:
    """Varnished light oak with growth rings, fibre streaks and pores, grain about vertical."""
    light = _draw_light(rng, elevation=(40, 60), specular=0.6, shininess=(15, 30))
    angle = float(rng.uniform(-4, 4))
    period = size / float(rng.uniform(16, 22))
    light_col = _jitter_rgb(rng, (0.78, 0.58, 0.38), 0.015)
    dark_col = _jitter_rgb(rng, (0.55, 0.34, 0.19), 0.015)
    albedo, height = _wood_maps(rng, size, angle, period, light_col, dark_col)
    gloss = np.full((size, size), 0.12, F32)
    aux = {"angle": angle, "period": period, "light_col": light_col, "dark_col": dark_col}
    return _Scene(albedo, height, gloss, light, np.ones((size, size), bool), aux)


def _woodgrain_scratch(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Pale scratch through the varnish, straight-ish, any direction."""
    return _surface_scratch(scene, rng, sev, scene.region, length=(0.15, 0.6), width=(0.7, 1.8),
                            pale=(0.93, 0.84, 0.68))


def _woodgrain_crack(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Dark split following the grain, tapering at both ends."""
    size = scene.size
    heading = np.pi / 2 - np.deg2rad(scene.aux["angle"]) + rng.choice([0.0, np.pi]) + rng.normal(0, 0.15)
    start = _pick(rng, scene.region, margin=size * 0.2)
    return _crack(scene, rng, sev, start, heading, length=(0.12, 0.55), width=(1.0, 3.2),
                  where=scene.region.astype(F32), dark=0.2, jag=0.2)


def _woodgrain_stain(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Water or coffee mark: a darker patch with a tide line."""
    return _stain(scene, rng, sev, scene.region, radius=(0.05, 0.13),
                  colours=((0.55, 0.45, 0.38), (0.45, 0.30, 0.18), (0.70, 0.68, 0.66)),
                  strength=(0.15, 0.7))


def _woodgrain_patch(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Foreign wood pasted in: an inlay whose grain runs at another angle and shade."""
    size = scene.size
    r = _lerp(0.05, 0.14, sev) * size
    a = _blob(rng, size, _pick(rng, scene.region, margin=r), r, rough=0.2, soft=0.8)
    turn = rng.choice([-1.0, 1.0]) * _lerp(15, 90, sev)
    shade = 1.0 + rng.choice([-1.0, 1.0]) * _lerp(0.02, 0.18, sev)
    albedo, height = _wood_maps(rng, size, scene.aux["angle"] + turn,
                                scene.aux["period"] * rng.uniform(0.5, 1.1),
                                scene.aux["light_col"] * shade, scene.aux["dark_col"] * shade)
    scene.albedo = _blend(scene.albedo, albedo, a)
    scene.height = _blend(scene.height, height, a)
    return a > 0


# ---------------------------------------------------------------------------- ceramic (texture)


def _ceramic_good(rng: np.random.Generator, size: int) -> _Scene:
    """Glazed celadon tiles with bevelled edges and speckles, set in grey grout."""
    light = _draw_light(rng, elevation=(62, 75), specular=0.45, shininess=(25, 50))
    y, x = _grid(size)
    pitch, grout = size / 3.2, max(2.0, 0.028 * size)
    th = float(np.deg2rad(rng.uniform(-1.5, 1.5)))
    oy, ox = (float(t) for t in rng.uniform(0, pitch, 2))
    u = np.cos(th) * x + np.sin(th) * y + ox
    v = -np.sin(th) * x + np.cos(th) * y + oy
    i, j = np.floor(u / pitch), np.floor(v / pitch)
    a, b = u - i * pitch, v - j * pitch
    edge = np.minimum(np.minimum(a, pitch - a), np.minimum(b, pitch - b)) - grout / 2
    tile = np.clip(edge + 0.5, 0.0, 1.0)
    grain = _noise(rng, size, 1.5)
    bevel = max(2.0, 0.016 * size)
    height = np.where(edge < 0, -0.6 + 0.25 * grain, 2.5 * _smoothstep(-0.5, bevel, edge))
    tile_shift = rng.normal(0.0, 0.012, (16, 16, 3)).astype(F32)
    glaze = _jitter_rgb(rng, (0.55, 0.66, 0.60), 0.01) + tile_shift[i.astype(int) % 16, j.astype(int) % 16]
    mott = _fbm(rng, size, size / 10, 3)
    speck = _smoothstep(2.2, 3.0, _noise(rng, size, 1.0))
    alb_tile = glaze * ((1.0 + 0.035 * mott) * (1.0 - 0.45 * speck))[..., None]
    alb_grout = _jitter_rgb(rng, (0.70, 0.69, 0.66), 0.01) * (1.0 + 0.08 * grain)[..., None]
    albedo = _blend(alb_grout, alb_tile, tile)
    gloss = (0.55 * tile).astype(F32)
    aux = {"edge": edge.astype(F32), "tile": tile.astype(F32), "pitch": pitch}
    return _Scene(albedo, height.astype(F32), gloss, light, edge > 0.1 * pitch, aux)


def _ceramic_crack(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Hairline to open crack in the glaze, sometimes branching."""
    start = _pick(rng, scene.region, margin=scene.size * 0.1)
    return _crack(scene, rng, sev, start, rng.uniform(0, 2 * np.pi), length=(0.08, 0.35),
                  width=(0.6, 1.6), where=scene.aux["tile"], dark=0.35)


def _ceramic_chip(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Chipped tile edge: glaze broken off, showing the rough terracotta body."""
    size = scene.size
    edge = scene.aux["edge"]
    r = _lerp(0.02, 0.07, sev) * size
    a = _blob(rng, size, _pick(rng, (edge > 0) & (edge < 1.5), margin=r), r, rough=0.4, soft=0.8)
    a *= scene.aux["tile"]
    grain = _noise(rng, size, 1.2)
    body = _rgb((0.78, 0.60, 0.46)) * (1.0 + 0.10 * grain)[..., None]
    scene.albedo = _blend(scene.albedo, body, a)
    scene.height = _blend(scene.height, -0.5 + 0.4 * grain, a)
    scene.gloss = _blend(scene.gloss, 0.0, a)
    return a > 0


def _ceramic_glaze(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Glaze colour fault: a burnt, bluish or bare patch on a tile, matte."""
    size = scene.size
    r = _lerp(0.04, 0.12, sev) * size
    a = _blob(rng, size, _pick(rng, scene.region, margin=r * 0.5), r, rough=0.3, soft=max(1.0, 0.4 * r))
    a *= scene.aux["tile"]
    shift = _rgb(((1.25, 1.02, 0.70), (0.78, 0.85, 1.20), (1.28, 1.26, 1.24))[int(rng.integers(3))])
    k = a * _lerp(0.12, 0.6, sev)
    scene.albedo = _blend(scene.albedo, np.clip(scene.albedo * shift, 0.0, 1.0), k)
    scene.gloss = (scene.gloss * (1.0 - 0.7 * k)).astype(F32)
    return a > 0.02


def _ceramic_dirt(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Grimy smudge of dark grains on tile and grout."""
    size = scene.size
    r = _lerp(0.03, 0.09, sev) * size
    a = _blob(rng, size, _pick(rng, np.ones_like(scene.region), margin=r), r, rough=0.4,
              soft=max(1.0, 0.35 * r))
    a *= 0.35 + 0.65 * _smoothstep(-0.3, 0.8, _noise(rng, size, 1.5))
    k = a * _lerp(0.25, 0.85, sev)
    scene.albedo = _blend(scene.albedo, _rgb((0.22, 0.20, 0.17)), k)
    scene.gloss = (scene.gloss * (1.0 - k)).astype(F32)
    return a > 0.02


# ---------------------------------------------------------------------------- vial (object)


def _vial_good(rng: np.random.Generator, size: int) -> _Scene:
    """Amber glass vial seen from above: glossy rim, shadowed inner wall, dark bottom."""
    light = _draw_light(rng, elevation=(50, 65), specular=0.8, shininess=(30, 50))
    y, x = _grid(size)
    cy, cx = (size / 2 + float(t) * 0.015 * size for t in rng.uniform(-1, 1, 2))
    r = np.hypot(y - cy, x - cx)
    r_out = 0.40 * size * (1 + float(rng.normal(0, 0.005)))
    rim_w = 0.075 * size
    r_in, r_bot = r_out - rim_w, 0.27 * size
    amber = _jitter_rgb(rng, (0.62, 0.42, 0.18), 0.015)
    q = np.clip(1.0 - ((r - (r_out - rim_w / 2)) / (rim_w / 2)) ** 2, 0.0, 1.0)
    wall = np.clip((r - r_bot) / (r_in - r_bot), 0.0, 1.0)
    h_obj = np.where(r >= r_in, 8.0 + 0.45 * rim_w * np.sqrt(q),
                     np.where(r >= r_bot, 8.0 - 16.0 * (1.0 - wall) ** 0.7,
                              -8.0 + 2.0 * (1.0 - (r / r_bot) ** 2)))
    mott = _fbm(rng, size, size / 8, 3)
    bands = 0.88 + 0.12 * np.cos(2 * np.pi * r / (0.22 * rim_w))
    refl = 0.15 * np.exp(-(((r - 0.55 * r_bot) / 2.0) ** 2))
    alb_rim = amber * bands[..., None]
    alb_wall = amber * (0.15 + 0.40 * wall)[..., None]
    alb_bot = _rgb((0.16, 0.10, 0.05)) * (1.0 + 0.15 * mott)[..., None] + refl[..., None] * amber
    albedo = np.where((r >= r_in)[..., None], alb_rim, np.where((r >= r_bot)[..., None], alb_wall, alb_bot))
    gloss = np.where(r >= r_in, 0.9, np.where(r >= r_bot, 0.4, 0.5))
    alpha = np.clip(r_out - r + 0.5, 0.0, 1.0).astype(F32)
    bg = _matte_background(rng, size, (0.20, 0.21, 0.23))
    obj = (albedo.astype(F32), h_obj.astype(F32), gloss.astype(F32))
    aux = {"r": r.astype(F32), "r_out": r_out, "r_in": r_in, "r_bot": r_bot, "amber": amber}
    return _object_scene(obj, bg, alpha, light, r < r_out - 1, aux)


def _vial_broken(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Piece broken out of the rim: a jagged notch, darker, with a glinting fracture edge."""
    size, r = scene.size, scene.aux["r"]
    r_out, r_in = scene.aux["r_out"], scene.aux["r_in"]
    rad = _lerp(0.025, 0.08, sev) * size
    band = (r > r_out - 0.35 * (r_out - r_in) - 1) & (r < r_out - 0.15 * (r_out - r_in))
    a = _blob(rng, size, _pick(rng, band), rad, rough=0.45, soft=0.7)
    a *= (r > r_in - 2).astype(F32) * scene.aux["alpha"]
    edge = 4.0 * a * (1.0 - a)
    scene.albedo = _blend(scene.albedo, scene.aux["amber"] * 0.35, a) + (0.25 * edge)[..., None]
    scene.height = (scene.height - 7.0 * a).astype(F32)
    scene.gloss = _blend(scene.gloss, 0.5, a)
    return a > 0


def _vial_contamination(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Particles, flakes or a fibre lying on the bottom of the vial."""
    size, r = scene.size, scene.aux["r"]
    where = r < 0.85 * scene.aux["r_bot"]
    a = np.zeros((size, size), F32)
    for _ in range(1 + int(rng.integers(0, 1 + int(4 * sev)))):
        a = np.maximum(a, _blob(rng, size, _pick(rng, where), _lerp(0.006, 0.022, sev) * size,
                                rough=0.4, soft=0.8))
    if rng.uniform() < 0.4:
        pts = _walk(rng, _pick(rng, where), rng.uniform(0, 2 * np.pi), _lerp(0.05, 0.18, sev) * size,
                    step=1.5, turn=0.25)
        a = np.maximum(a, _stroke(size, pts, _lerp(0.8, 1.3, sev))[0])
    a *= where
    colour = (0.03, 0.03, 0.03) if rng.uniform() < 0.5 else (0.75, 0.72, 0.65)
    scene.albedo = _blend(scene.albedo, _rgb(colour), a)
    scene.height = (scene.height + 0.8 * a).astype(F32)
    scene.gloss = _blend(scene.gloss, 0.1, a)
    return a > 0


def _vial_crack(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Thin crack running across the rim, seen as a bright line in the glass."""
    size, r = scene.size, scene.aux["r"]
    r_out, r_in = scene.aux["r_out"], scene.aux["r_in"]
    rim = ((r > r_in - 1) & (r < r_out)).astype(F32)
    start = _pick(rng, (r > r_in) & (r < r_out - 2))
    c = size / 2.0
    radial = np.arctan2(start[0] - c, start[1] - c) + rng.choice([0.0, np.pi]) + rng.normal(0, 0.4)
    pts = _walk(rng, start, radial, _lerp(0.05, 0.2, sev) * size, step=1.5, turn=0.1, jag=0.35)
    a, tube = _stroke(size, pts, _lerp(0.6, 1.4, sev))
    a *= rim
    scene.albedo = _blend(scene.albedo, _rgb((0.95, 0.90, 0.75)), a * _lerp(0.3, 0.9, sev))
    scene.height = (scene.height - 0.8 * tube * a).astype(F32)
    return a > 0


# ---------------------------------------------------------------------------- washer (object)


def _washer_good(rng: np.random.Generator, size: int) -> _Scene:
    """Keyed steel washer with lathe marks and a notch in its outer edge, on a rubber mat."""
    light = _draw_light(rng, elevation=(45, 60), specular=0.7, shininess=(15, 30))
    y, x = _grid(size)
    cy, cx = (size / 2 + float(t) * 0.015 * size for t in rng.uniform(-1, 1, 2))
    dy, dx = y - cy, x - cx
    r, phi = np.hypot(dy, dx), np.arctan2(dy, dx)
    r_out, r_in = 0.40 * size, 0.17 * size
    key = float(-np.pi / 2 + np.deg2rad(rng.uniform(-4, 4)))
    along = dx * np.cos(key) + dy * np.sin(key)
    across = -dx * np.sin(key) + dy * np.cos(key)
    notch = np.minimum(0.035 * size - np.abs(across), along - (r_out - 0.055 * size))
    sd = np.minimum(np.minimum(r_out - r, r - r_in), -notch)     # px inside the metal
    alpha = np.clip(sd + 0.5, 0.0, 1.0).astype(F32)
    h_obj = 4.0 * _smoothstep(-0.5, 2.5, sd)
    az = np.arctan2(light.direction[1], light.direction[0])
    sheen = 0.72 + 0.38 * np.cos(phi - az - np.pi / 2) ** 2
    lathe = _profile(rng, r, 0.7)
    steel = _jitter_rgb(rng, (0.62, 0.63, 0.66), 0.01)
    alb_obj = steel * (sheen * (1.0 + 0.07 * lathe + 0.04 * _fbm(rng, size, size / 6, 3)))[..., None]
    obj = (alb_obj.astype(F32), h_obj.astype(F32), np.full((size, size), 0.45, F32))
    bg = _matte_background(rng, size, (0.13, 0.14, 0.13))
    aux = {"r": r.astype(F32), "phi": phi.astype(F32), "r_out": r_out, "r_in": r_in, "key": key,
           "center": (float(cy), float(cx)), "sd": sd.astype(F32)}
    return _object_scene(obj, bg, alpha, light, sd > 3.0, aux)


def _washer_scratch(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Straight scratch across the metal face, bright or dark."""
    where = scene.aux["sd"] > 1.0
    return _surface_scratch(scene, rng, sev, where, length=(0.08, 0.4), width=(0.6, 1.5),
                            pale=(0.95, 0.95, 0.97))


def _washer_bent(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Bent outer edge: a sector of the rim pushed in or out and tilted out of plane."""
    size, r, phi = scene.size, scene.aux["r"], scene.aux["phi"]
    r_out, r_in = scene.aux["r_out"], scene.aux["r_in"]
    centre = float(rng.uniform(0.7, 2 * np.pi - 0.7)) + scene.aux["key"]
    half = float(np.deg2rad(_lerp(15, 40, sev)))
    disp = float(rng.choice([-1.0, 1.0])) * _lerp(1.0, 6.0, sev)
    dphi = np.angle(np.exp(1j * (phi - centre)))
    w_ang = np.where(np.abs(dphi) < half, np.cos(np.pi / 2 * dphi / half) ** 2, 0.0)
    mid = r_in + 0.4 * (r_out - r_in)
    w_rad = _smoothstep(mid, r_out, r) * (1.0 - _smoothstep(r_out + abs(disp) + 2, r_out + abs(disp) + 6, r))
    w = (w_ang * w_rad).astype(F32)
    obj_albedo, obj_height, obj_gloss = scene.aux["obj"]
    cy, cx = scene.aux["center"]
    y, x = _grid(size)
    sy = y - disp * w * (y - cy) / np.maximum(r, 1.0)
    sx = x - disp * w * (x - cx) / np.maximum(r, 1.0)

    def warp(layer: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(layer, [sy, sx], order=1, mode="nearest").astype(F32)

    albedo = np.stack([warp(obj_albedo[..., k]) for k in range(3)], axis=-1)
    height = warp(obj_height) - _lerp(0.5, 3.0, sev) * w
    alpha = warp(scene.aux["alpha"])
    bg_albedo, bg_height, bg_gloss = scene.aux["bg"]
    bent = w > 1e-4
    scene.albedo = np.where(bent[..., None], _blend(bg_albedo, albedo, alpha), scene.albedo).astype(F32)
    scene.height = np.where(bent, _blend(bg_height, height, alpha), scene.height).astype(F32)
    scene.gloss = np.where(bent, _blend(bg_gloss, warp(obj_gloss), alpha), scene.gloss).astype(F32)
    return bent


def _washer_rust(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Corrosion: granular orange-brown patch, matte and slightly raised."""
    size = scene.size
    r = _lerp(0.02, 0.08, sev) * size
    a = _blob(rng, size, _pick(rng, scene.region), r, rough=0.45, soft=max(1.0, 0.3 * r))
    grain = _noise(rng, size, 2.0)
    a *= _smoothstep(-0.8, 0.6, grain + _lerp(-0.2, 0.8, sev)) * scene.aux["alpha"]
    tone = _smoothstep(-1.0, 1.0, _noise(rng, size, 3.0))[..., None]
    rust = _rgb((0.42, 0.20, 0.09)) + (_rgb((0.62, 0.36, 0.16)) - _rgb((0.42, 0.20, 0.09))) * tone
    k = a * _lerp(0.35, 1.0, sev)
    scene.albedo = _blend(scene.albedo, rust, k)
    scene.gloss = _blend(scene.gloss, 0.0, k)
    scene.height = (scene.height + 0.4 * a * grain).astype(F32)
    return a > 0.01


# ---------------------------------------------------------------------------- tablet (object)


def _tablet_good(rng: np.random.Generator, size: int) -> _Scene:
    """Oblong white tablet with a score line, red speckles and a printed mark, on slate."""
    light = _draw_light(rng, elevation=(45, 60), specular=0.5, shininess=(12, 25))
    y, x = _grid(size)
    cy, cx = (size / 2 + float(t) * 0.015 * size for t in rng.uniform(-1, 1, 2))
    th = float(np.deg2rad(rng.uniform(-4, 4)))
    dy, dx = y - cy, x - cx
    u = np.cos(th) * dx + np.sin(th) * dy
    v = -np.sin(th) * dx + np.cos(th) * dy
    half_len, rad = 0.34 * size, 0.165 * size
    sd = np.hypot(np.maximum(np.abs(u) - (half_len - rad), 0.0), v) - rad   # < 0 inside
    alpha = np.clip(0.5 - sd, 0.0, 1.0).astype(F32)
    depth = np.clip(-sd / rad, 0.0, 1.0)
    h_obj = 0.09 * size * np.sqrt(1.0 - (1.0 - depth) ** 2) - 1.6 * np.exp(-((u / 1.3) ** 2))
    speck = _smoothstep(2.6, 3.2, _noise(rng, size, 1.2))
    cream = _jitter_rgb(rng, (0.91, 0.89, 0.84), 0.01)
    base = cream * (1.0 + 0.025 * _noise(rng, size, 1.5))[..., None]
    base = _blend(base, _rgb((0.78, 0.40, 0.33)), 0.8 * speck)
    ring = np.abs(np.hypot(u - 0.5 * half_len, v) - 0.065 * size)
    bar = np.maximum(np.abs(u + 0.5 * half_len) - 0.06 * size, np.abs(v) - 0.012 * size)
    stem = np.maximum(np.abs(u + 0.5 * half_len) - 0.012 * size, np.abs(v) - 0.06 * size)
    glyph = np.minimum(ring - 0.012 * size, np.minimum(bar, stem))
    ink = _rgb((0.55, 0.15, 0.15))
    printed = (np.clip(0.5 - glyph, 0.0, 1.0) * 0.9).astype(F32)
    obj = (_blend(base, ink, printed), h_obj.astype(F32), np.full((size, size), 0.18, F32))
    bg = _matte_background(rng, size, (0.14, 0.16, 0.15))
    aux = {"sd": sd.astype(F32), "printed": printed, "ink": ink, "rad": rad, "unprinted": base.astype(F32),
           "center": (float(cy), float(cx))}
    return _object_scene(obj, bg, alpha, light, sd < -2.0, aux)


def _tablet_crack(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Crack running in from the tablet's edge."""
    sd = scene.aux["sd"]
    start = _pick(rng, (sd > -3.0) & (sd < -1.0))
    cy, cx = scene.aux["center"]
    inward = np.arctan2(cy - start[0], cx - start[1]) + rng.normal(0, 0.5)
    return _crack(scene, rng, sev, start, inward, length=(0.1, 0.4), width=(1.0, 2.2),
                  where=scene.aux["alpha"], dark=0.45, jag=0.3)


def _tablet_chip(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Missing piece: a bite out of the tablet's edge, showing the slate behind."""
    size, sd = scene.size, scene.aux["sd"]
    r = _lerp(0.03, 0.09, sev) * size
    a = _blob(rng, size, _pick(rng, np.abs(sd) < 1.0), r, rough=0.4, soft=0.7)
    a *= scene.aux["alpha"]
    _reveal_background(scene, a)
    return a > 0


def _tablet_print(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Print fault: part of the mark missing, a smeared double print, or an ink blot."""
    size, printed = scene.size, scene.aux["printed"]
    mode = int(rng.integers(3))
    if mode == 0:
        eraser = _blob(rng, size, _pick(rng, printed > 0.5), _lerp(0.015, 0.05, sev) * size, soft=0.8)
        new = printed * (1.0 - eraser)
    elif mode == 1:
        shift = rng.normal(0.0, 1.0, 2)
        shift *= _lerp(1.5, 5.0, sev) / (np.linalg.norm(shift) + 1e-9)
        ghost = ndimage.shift(printed, shift, order=1, mode="constant")
        new = np.maximum(printed, ghost * _lerp(0.3, 0.8, sev))
    else:
        blot = _blob(rng, size, _pick(rng, (printed > 0.5) | (scene.aux["sd"] < -0.15 * size)),
                     _lerp(0.008, 0.03, sev) * size, rough=0.4, soft=0.8)
        new = np.maximum(printed, 0.9 * blot)
    change = (np.abs(new - printed) * scene.aux["alpha"]).astype(F32)
    target = _blend(scene.aux["unprinted"], scene.aux["ink"], new.astype(F32))
    scene.albedo = np.where((change > 0)[..., None], _blend(scene.aux["bg"][0], target, scene.aux["alpha"]),
                            scene.albedo).astype(F32)
    return change > 0


def _tablet_contamination(scene: _Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Foreign spot stuck to the coating: brown, blue or black, slightly raised."""
    size = scene.size
    a = _blob(rng, size, _pick(rng, scene.region), _lerp(0.01, 0.05, sev) * size, rough=0.35, soft=1.0)
    a *= scene.aux["alpha"]
    colour = _rgb(((0.30, 0.20, 0.10), (0.20, 0.30, 0.70), (0.08, 0.08, 0.08))[int(rng.integers(3))])
    scene.albedo = _blend(scene.albedo, colour, a * _lerp(0.3, 0.95, sev))
    scene.height = (scene.height + 0.6 * a).astype(F32)
    return a > 0


# ---------------------------------------------------------------------------- registry


def _spec(name: str, kind: str, description: str, **defects: str) -> CategorySpec:
    return CategorySpec(name, kind, tuple(defects), description, MappingProxyType(dict(defects)))


CATEGORIES: dict[str, CategorySpec] = {
    s.name: s for s in (
        _spec("fabric", "texture", "Denim-like 2/1 twill: indigo warp over off-white weft, slubs and fading.",
              hole="torn hole showing the dark backing, frayed rim",
              stain="oil, tea or rust-coloured stain soaked into the weave",
              thread="loose foreign thread lying on the cloth, sometimes of matching colour"),
        _spec("woodgrain", "texture", "Varnished light oak: growth rings, fibre streaks, pores; grain about vertical.",
              scratch="pale scratch through the varnish",
              crack="dark split along the grain, tapering",
              stain="water or coffee mark with a tide line",
              patch="foreign wood inlay with grain at another angle and shade"),
        _spec("ceramic", "texture", "Glossy celadon tiles with bevelled edges and speckles in grey grout.",
              crack="hairline to open crack in the glaze, sometimes branching",
              chip="chipped tile edge showing the terracotta body",
              glaze="colour fault: burnt, bluish or bare glaze patch",
              dirt="smudge of dark grains on tile and grout"),
        _spec("vial", "object", "Amber glass vial seen from above: glossy rim, inner wall, dark bottom.",
              broken="piece broken out of the rim",
              contamination="particles, flakes or a fibre on the bottom",
              crack="thin bright crack across the rim"),
        _spec("washer", "object", "Keyed steel washer with lathe marks and an edge notch on a rubber mat.",
              scratch="straight scratch across the metal face",
              bent="sector of the outer edge bent in or out of shape",
              rust="granular orange-brown corrosion patch"),
        _spec("tablet", "object", "Oblong white tablet with score line, red speckles and a printed mark.",
              crack="crack running in from the edge",
              chip="piece missing from the edge",
              print="print fault: missing part, smeared double print or ink blot",
              contamination="foreign brown, blue or black spot"),
    )
}

_PAINTERS: dict[str, tuple[GoodFn, dict[str, DefectFn]]] = {
    "fabric": (_fabric_good, {"hole": _fabric_hole, "stain": _fabric_stain, "thread": _fabric_thread}),
    "woodgrain": (_woodgrain_good, {"scratch": _woodgrain_scratch, "crack": _woodgrain_crack,
                                    "stain": _woodgrain_stain, "patch": _woodgrain_patch}),
    "ceramic": (_ceramic_good, {"crack": _ceramic_crack, "chip": _ceramic_chip,
                                "glaze": _ceramic_glaze, "dirt": _ceramic_dirt}),
    "vial": (_vial_good, {"broken": _vial_broken, "contamination": _vial_contamination,
                          "crack": _vial_crack}),
    "washer": (_washer_good, {"scratch": _washer_scratch, "bent": _washer_bent, "rust": _washer_rust}),
    "tablet": (_tablet_good, {"crack": _tablet_crack, "chip": _tablet_chip, "print": _tablet_print,
                              "contamination": _tablet_contamination}),
}


# ---------------------------------------------------------------------------- validation


def _check_category(category: str) -> CategorySpec:
    if category not in CATEGORIES:
        raise DataError(f"unknown synthetic category {category!r}; valid: {', '.join(CATEGORIES)}")
    return CATEGORIES[category]


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < MIN_SIZE:
        raise DataError(f"synthetic image size must be an integer >= {MIN_SIZE}, got {size!r}")
    return int(size)


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_count(name: str, value: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------- rendering


def _rng(seed: int, category: str, split: str, defect: str, index: int) -> np.random.Generator:
    """Generator for one image, independent of generation order."""
    key = [seed, zlib.crc32(category.encode()), zlib.crc32(f"{split}/{defect}".encode()), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def _defect_mask(painted: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Changed pixels near the painted footprint: [H, W] bool from [H, W] bool and [H, W, 3] float."""
    reach = ndimage.binary_dilation(painted, iterations=_SPREAD)
    mask = reach & (np.abs(delta).max(axis=-1) >= _CHANGE)
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3), bool)) & reach
    return ndimage.binary_fill_holes(mask) & reach


def render_sample(category: str, split: str = "train", defect: str = "good", index: int = 0,
                  seed: int = 0, size: int = 256) -> SyntheticSample:
    """Render one image exactly as :func:`generate_category` writes it.

    ``split`` is "train" or "test"; ``defect`` is "good" or one of the category's defects
    (test split only). Returns image/clean [H, W, 3] uint8 and mask [H, W] uint8 (or None).
    """
    spec = _check_category(category)
    size, seed = _check_size(size), _check_seed(seed)
    if split not in ("train", "test") or (defect != "good" and (split != "test" or defect not in spec.defects)):
        raise DataError(f"no {split}/{defect} images in synthetic category {category!r}; "
                        f"defects: {', '.join(spec.defects)}")
    good_fn, painters = _PAINTERS[category]
    rng = _rng(seed, category, split, defect, int(index))
    scene = good_fn(rng, size)
    noise = _sensor_noise(rng, size, scene.light.noise)
    clean = _shade(scene)
    good = _quantize(clean + noise)
    if defect == "good":
        return SyntheticSample(good, good, None)
    min_area = max(12, int(4e-4 * size * size))
    for attempt in range(_TRIES):
        severity = max(float(rng.uniform()), attempt / (_TRIES - 1))
        bad = scene.copy()
        painted = painters[defect](bad, rng, severity)
        shaded = _shade(bad)
        mask = _defect_mask(painted, shaded - clean)
        if mask.sum() >= min_area:
            break
    image = np.where(mask[..., None], _quantize(shaded + noise), good)
    return SyntheticSample(image, good, mask.astype(np.uint8) * 255)


# ---------------------------------------------------------------------------- writing


def _write_png(path: Path, array: np.ndarray) -> None:
    """[H, W, 3] or [H, W] uint8 -> PNG without metadata chunks (deterministic bytes)."""
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _plan(spec: CategorySpec, n_train: int, n_test_good: int, n_per_defect: int
          ) -> list[tuple[str, str, int]]:
    """(split, defect, count) for every folder of one category."""
    return ([("train", "good", n_train), ("test", "good", n_test_good)]
            + [("test", d, n_per_defect) for d in spec.defects])


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished ``tmp`` directory onto ``final``, replacing any old one."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_leftovers(root: Path, category: str) -> None:
    """Delete hidden work directories of ``category`` left by killed runs (dead pid)."""
    for path in root.glob(f".{category}.*-*-*"):
        parts = path.name.split("-")
        if path.is_dir() and len(parts) >= 3 and parts[-2].isdigit() and not _pid_alive(int(parts[-2])):
            shutil.rmtree(path, ignore_errors=True)


def generate_category(output: str | Path, category: str, seed: int = 0, size: int = 256,
                      n_train: int = N_TRAIN, n_test_good: int = N_TEST_GOOD,
                      n_per_defect: int = N_PER_DEFECT) -> Path:
    """Write one category under ``output`` in MVTec AD layout; returns ``output/category``.

    Written into a hidden sibling directory first and renamed when complete, so an
    interrupted run never leaves a half category behind.
    """
    spec = _check_category(category)
    size, seed = _check_size(size), _check_seed(seed)
    counts = [_check_count(n, v) for n, v in
              (("n_train", n_train), ("n_test_good", n_test_good), ("n_per_defect", n_per_defect))]
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root, category)
    tmp = root / f".{category}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for split, defect, count in _plan(spec, *counts):
            folder = tmp / split / defect
            folder.mkdir(parents=True)
            masks = tmp / "ground_truth" / defect
            if defect != "good":
                masks.mkdir(parents=True)
            for i in range(count):
                sample = render_sample(category, split, defect, i, seed=seed, size=size)
                _write_png(folder / f"{i:03d}.png", sample.image)
                if sample.mask is not None:
                    _write_png(masks / f"{i:03d}_mask.png", sample.mask)
        _replace_dir(tmp, root / category)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / category


def _marker(seed: int, size: int, categories: Sequence[str]) -> dict[str, Any]:
    return {"generator": "fapm_lib.synthetic", "version": VERSION, "seed": seed, "size": size,
            "categories": sorted(categories),
            "counts": {"train": N_TRAIN, "test_good": N_TEST_GOOD, "per_defect": N_PER_DEFECT}}


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def generate_dataset(output: str | Path, seed: int = 0, size: int = 256,
                     categories: Sequence[str] | None = None, progress: bool = False) -> Path:
    """Write the listed categories (all by default) under ``output``; returns ``output``.

    The marker ``output/.complete`` (seed, size, version, categories) is written last.
    """
    names = list(dict.fromkeys(CATEGORIES if categories is None else categories))
    for name in names:
        _check_category(name)
    size, seed = _check_size(size), _check_seed(seed)
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    old = _read_marker(root)
    (root / MARKER).unlink(missing_ok=True)
    kept: list[str] = []
    if old and (old.get("version"), old.get("seed"), old.get("size")) == (VERSION, seed, size):
        kept = [c for c in old.get("categories", []) if c in CATEGORIES and (root / c).is_dir()]
    for name in names:
        start = time.perf_counter()
        generate_category(root, name, seed=seed, size=size)
        if progress:
            print(f"synth: {name} written in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    write_text_atomic(root / MARKER, json.dumps(_marker(seed, size, set(kept) | set(names)),
                                                indent=1, sort_keys=True) + "\n")
    return root


def ensure_dataset(output: str | Path, seed: int = 0, size: int = 256) -> Path:
    """Return ``output`` holding the full set for (seed, size), generating it only if missing
    or incomplete."""
    root = Path(output)
    size, seed = _check_size(size), _check_seed(seed)
    if _read_marker(root) == _marker(seed, size, CATEGORIES) and all((root / c).is_dir() for c in CATEGORIES):
        return root
    return generate_dataset(root, seed=seed, size=size)


# ---------------------------------------------------------------------------- overview figure


def _representative(root: Path, category: str, defect: str) -> tuple[Path, Path | None]:
    """Image (and mask) of one defect type with the median mask area: typical, not extreme."""
    images = sorted((root / category / "test" / defect).glob("*.png"))
    if defect == "good" or not images:
        return images[0], None
    masks = [root / category / "ground_truth" / defect / f"{p.stem}_mask.png" for p in images]
    areas = [int((np.asarray(Image.open(m)) > 0).sum()) for m in masks]
    k = int(np.argsort(areas)[len(areas) // 2])
    return images[k], masks[k]


def plot_overview(root: str | Path, output_png: str | Path) -> Path:
    """Figure: per category one good test image and one image per defect type with its
    mask outlined in red; saved to ``output_png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    names = [c for c in CATEGORIES if (root / c).is_dir()]
    if not names:
        raise DataError(f"no synthetic categories under {root}")
    cols = 1 + max(len(CATEGORIES[c].defects) for c in names)
    fig, axes = plt.subplots(len(names), cols, figsize=(2.1 * cols, 2.25 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        for ax in row:
            ax.axis("off")
        for ax, defect in zip(row, ("good",) + CATEGORIES[name].defects):
            image, mask = _representative(root, name, defect)
            ax.imshow(np.asarray(Image.open(image)))
            if mask is not None:
                ax.contour(np.asarray(Image.open(mask)) > 0, levels=[0.5], colors="red", linewidths=0.7)
            ax.set_title(f"{name}/{defect}", fontsize=8)
    fig.tight_layout()
    output_png = Path(output_png)
    output_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output_png, dpi=90)
    plt.close(fig)
    return output_png
