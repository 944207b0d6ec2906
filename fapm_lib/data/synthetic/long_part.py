"""The long category: a machined steel rail, three times as wide as high, with small defects
anywhere on it, ends and corners included (what a centre crop or a square resize loses).

The image is ``2 size x 6 size`` pixels (512 x 1536 at the default size 256). The part lies along
the image with a few pixels of fixture play (train and test alike); ``shift`` moves it further,
as a part that does not sit still (measurements only). Defects cover 0.05 % to 0.5 % of the image:
a short scratch, a pit, a stain, or a chipped edge; one in five at each end, one in five at
a corner, the other two in five along the middle.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

#: the long part's image, in multiples of ``size``: (height, width)
ASPECT = (2, 6)
DEFECTS = {
    "scratch": "short bright scratch across the brushed metal",
    "pit": "small dark pit with a bright rim",
    "stain": "oil or rust spot",
    "chip": "piece chipped out of an edge or a corner",
}
#: defect area as a fraction of the image
AREA = (5e-4, 5e-3)
_PLAY = 0.004  # fixture play: the part's random offset, as a fraction of the image's width and height


def render_long(split: str, defect: str, rng: np.random.Generator, size: int,
                shift: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One rail image: ``(image, clean, mask)``, uint8 ``[2 size, 6 size, 3]`` and ``[2 size, 6 size]``
    (mask None for a good image). ``shift``: the part moved by these fractions of the image's
    width and height (``(0.02, 0)``: 2 % of the width to the right)."""
    height, width = ASPECT[0] * size, ASPECT[1] * size
    play = rng.uniform(-_PLAY, _PLAY, 2)
    dx, dy = (play[0] + shift[0]) * width, (play[1] + shift[1]) * height
    albedo, inside, geometry = _rail(rng, height, width, dx, dy)
    noise = rng.normal(0.0, 2.0 / 255.0, (height, width, 1)).astype(np.float32)
    clean = _finish(albedo, noise)
    if defect == "good":
        return clean, clean, None
    for _ in range(8):
        painted, mask = _defect(defect, albedo.copy(), inside, geometry, rng, height * width)
        if mask.sum() >= AREA[0] * height * width * 0.5:
            break
    rows, cols = ndimage.find_objects(mask.astype(np.uint8))[0] if mask.any() else (slice(0, 0), slice(0, 0))
    near = (slice(max(rows.start - 8, 0), rows.stop + 8), slice(max(cols.start - 8, 0), cols.stop + 8))
    image = clean.copy()
    image[near] = np.where(mask[near][..., None], _finish(painted[near], noise[near]), clean[near])
    return image, clean, mask.astype(np.uint8) * 255


def _rail(rng: np.random.Generator, height: int, width: int, dx: float, dy: float
          ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The good scene's albedo ``[H, W, 3]`` (float, light included), the part's surface (its
    silhouette without the holes: where defects go) and its box."""
    y, x = _grid(height, width)
    x0, x1 = 0.03 * width + dx, 0.97 * width + dx
    y0, y1 = 0.22 * height + dy, 0.78 * height + dy
    chamfer = 0.12 * (y1 - y0)
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    for cx, cy, sx, sy in ((x0, y0, 1, 1), (x1, y0, -1, 1), (x0, y1, 1, -1), (x1, y1, -1, -1)):
        inside &= (sx * (x - cx) + sy * (y - cy)) >= chamfer
    belt = 0.10 + 0.03 * ndimage.gaussian_filter(rng.standard_normal((height, width), dtype=np.float32), 3.0)
    streaks = ndimage.gaussian_filter1d(rng.standard_normal(height), 1.2)[:, None] * 0.05
    brushed = 0.55 + streaks + 0.015 * ndimage.gaussian_filter(rng.standard_normal((height, width), dtype=np.float32),
                                                               (0.6, 8.0))
    grooves = sum(np.exp(-(((y - (y0 + f * (y1 - y0))) / 2.5) ** 2)) for f in (0.35, 0.65))
    metal = brushed - 0.25 * grooves
    surface = inside.copy()
    for cx in (x0 + 0.05 * width, x1 - 0.05 * width):
        r = np.hypot(x - cx, y - (y0 + y1) / 2)
        hole_r = 0.16 * (y1 - y0)
        metal = np.where(r < hole_r, 0.08, metal + 0.25 * np.exp(-(((r - hole_r) / 2.0) ** 2)))
        surface &= r > hole_r + 3
    light = 0.9 + 0.15 * (x / width - 0.5) * float(rng.uniform(-1, 1)) + 0.05 * float(rng.uniform(-1, 1))
    tint = np.array([0.98, 1.0, 1.03], np.float32) * (1 + rng.normal(0, 0.01, 3)).astype(np.float32)
    grey = np.where(inside, metal, belt) * light
    albedo = (grey[..., None] * tint).astype(np.float32)
    return albedo, surface, {"box": (x0, y0, x1, y1)}


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``y [H, 1]`` and ``x [1, W]``, float32 (they broadcast)."""
    return np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :]


def _finish(albedo: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Optical blur, sensor noise, 8 bits."""
    blurred = ndimage.gaussian_filter(albedo, (0.6, 0.6, 0))
    return np.clip(np.rint((blurred + noise) * 255.0), 0, 255).astype(np.uint8)


def _defect(defect: str, albedo: np.ndarray, inside: np.ndarray, geometry: dict, rng: np.random.Generator,
            pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of ``defect``'s kind at a drawn place; the painted albedo and the mask."""
    height, width = inside.shape
    x0, y0, x1, y1 = geometry["box"]
    area = float(np.exp(rng.uniform(np.log(AREA[0]), np.log(AREA[1])))) * pixels
    place = rng.choice(["left end", "right end", "corner", "middle", "middle"])
    span = 0.12 * (x1 - x0)
    if place == "left end":
        cx, cy = rng.uniform(x0, x0 + span), rng.uniform(y0, y1)
    elif place == "right end":
        cx, cy = rng.uniform(x1 - span, x1), rng.uniform(y0, y1)
    elif place == "corner":
        in_x, in_y = 0.5 * span * rng.uniform(0.3, 1.0), 0.25 * (y1 - y0) * rng.uniform(0.2, 1.0)
        cx = x0 + in_x if rng.uniform() < 0.5 else x1 - in_x
        cy = y0 + in_y if rng.uniform() < 0.5 else y1 - in_y
    else:
        cx, cy = rng.uniform(x0 + span, x1 - span), rng.uniform(y0, y1)
    y, x = _grid(height, width)
    if defect == "scratch":
        length = float(np.clip(area / 3.0, 12.0, 0.5 * (y1 - y0)))
        half_width = float(np.clip(area / length / 2.0, 1.0, 4.0))
        angle = rng.uniform(0, np.pi)
        ux, uy = np.cos(angle), np.sin(angle)
        along = (x - cx) * ux + (y - cy) * uy
        across = -(x - cx) * uy + (y - cy) * ux
        mask = (np.abs(along) <= length / 2) & (np.abs(across) <= half_width) & inside
        albedo = np.where(mask[..., None], albedo * 1.6 + 0.15, albedo)
    elif defect == "pit":
        r = np.sqrt(area / np.pi)
        d = np.hypot(x - cx, y - cy)
        core, rim = d <= r * 0.8, (d > r * 0.8) & (d <= r)
        albedo = np.where((core & inside)[..., None], albedo * 0.25, albedo)
        albedo = np.where((rim & inside)[..., None], albedo * 1.5 + 0.1, albedo)
        mask = (d <= r) & inside
    elif defect == "stain":
        r = np.sqrt(area / np.pi)
        noise = ndimage.gaussian_filter(rng.standard_normal((height, width)).astype(np.float32), 2.0)
        d = np.hypot(x - cx, (y - cy) * rng.uniform(0.7, 1.3)) + 2.5 * noise * r / 10
        colour = np.array([0.55, 0.35, 0.18] if rng.uniform() < 0.5 else [0.35, 0.33, 0.3], np.float32)
        mask = (d <= r) & inside
        albedo = np.where(mask[..., None], albedo * colour / 0.6, albedo)
    else:  # chip: the part's edge (top or bottom, or a corner) with a notch; the belt shows
        r = np.sqrt(2 * area / np.pi)
        cy = y0 if rng.uniform() < 0.5 else y1
        d = np.hypot(x - cx, y - cy)
        mask = (d <= r) & inside
        albedo = np.where(mask[..., None], 0.11, albedo)
    return albedo, mask
