"""Scene maps (albedo, height, gloss), a random directional light, shading, sensor noise."""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

_CAMERA = 1.5               # camera height above the image centre, in image sizes
F32 = np.float32


@dataclass(frozen=True)
class Light:
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
class Scene:
    """Material maps of one image; defects edit them in place.

    albedo: [H, W, 3] float32 in [0, 1]; height: [H, W] float32 (px); gloss: [H, W] float32.
    region: [H, W] bool, where a defect may be placed. aux: category-specific geometry.
    """

    albedo: np.ndarray
    height: np.ndarray
    gloss: np.ndarray
    light: Light
    region: np.ndarray
    aux: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.height.shape[0])

    def copy(self) -> Scene:
        """Copy of the editable maps; region and aux are shared (read only)."""
        return Scene(self.albedo.copy(), self.height.copy(), self.gloss.copy(),
                     self.light, self.region, self.aux)


GoodFn = Callable[[np.random.Generator, int], Scene]
DefectFn = Callable[[Scene, np.random.Generator, float], np.ndarray]


def draw_light(rng: np.random.Generator, elevation: tuple[float, float] = (35, 55),
               azimuth: tuple[float, float] = (200, 250), specular: float = 1.0,
               shininess: tuple[float, float] = (20, 40)) -> Light:
    """Random light from the given ranges (degrees), plus camera and sensor jitter."""
    el = np.deg2rad(rng.uniform(*elevation))
    az = np.deg2rad(rng.uniform(*azimuth))
    direction = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], F32)
    ambient = float(rng.uniform(0.28, 0.38))
    return Light(
        direction=direction, ambient=ambient, diffuse=1.0 - ambient, specular=specular,
        shininess=float(rng.uniform(*shininess)), gain=float(rng.uniform(0.92, 1.06)),
        ramp=(float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08))),
        vignette=float(rng.uniform(0.04, 0.12)),
        tint=(1.0 + rng.normal(0.0, 0.01, 3)).astype(F32),
        blur=float(rng.uniform(0.45, 0.75)), noise=float(rng.uniform(1.2, 2.8)) / 255.0)


def shade_scene(scene: Scene) -> np.ndarray:
    """Lit and optically blurred image, [H, W, 3] float32 (not yet clipped)."""
    lt, size = scene.light, scene.size
    y, x = pixel_grid(size)
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


def sensor_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian sensor noise, mostly luminance, [H, W, 3] float32."""
    shared = rng.standard_normal((size, size, 1), dtype=F32)
    chroma = rng.standard_normal((size, size, 3), dtype=F32)
    return (sigma * (0.8 * shared + 0.45 * chroma)).astype(F32)


def quantize(img: np.ndarray) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(y, x)``, each [size, size] float32, read only."""
    c = np.arange(size, dtype=F32)
    y, x = np.meshgrid(c, c, indexing="ij")
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x
