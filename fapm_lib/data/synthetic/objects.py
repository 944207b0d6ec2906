"""The object categories: vial, washer, tablet (good scenes and their defects)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .defects import paint_crack, surface_scratch
from .materials import (
    blend,
    blob,
    fbm,
    jitter_rgb,
    lerp,
    matte_background,
    object_scene,
    pick,
    profile,
    reveal_background,
    rgb,
    smoothstep,
    stroke,
    value_noise,
    walk,
)
from .shading import F32, DefectFn, GoodFn, Scene, draw_light, pixel_grid

# ---------------------------------------------------------------------------- vial (object)


def _vial_good(rng: np.random.Generator, size: int) -> Scene:
    """Amber glass vial seen from above: glossy rim, shadowed inner wall, dark bottom."""
    light = draw_light(rng, elevation=(50, 65), specular=0.8, shininess=(30, 50))
    y, x = pixel_grid(size)
    cy, cx = (size / 2 + float(t) * 0.015 * size for t in rng.uniform(-1, 1, 2))
    r = np.hypot(y - cy, x - cx)
    r_out = 0.40 * size * (1 + float(rng.normal(0, 0.005)))
    rim_w = 0.075 * size
    r_in, r_bot = r_out - rim_w, 0.27 * size
    amber = jitter_rgb(rng, (0.62, 0.42, 0.18), 0.015)
    q = np.clip(1.0 - ((r - (r_out - rim_w / 2)) / (rim_w / 2)) ** 2, 0.0, 1.0)
    wall = np.clip((r - r_bot) / (r_in - r_bot), 0.0, 1.0)
    h_obj = np.where(r >= r_in, 8.0 + 0.45 * rim_w * np.sqrt(q),
                     np.where(r >= r_bot, 8.0 - 16.0 * (1.0 - wall) ** 0.7,
                              -8.0 + 2.0 * (1.0 - (r / r_bot) ** 2)))
    mott = fbm(rng, size, size / 8, 3)
    bands = 0.88 + 0.12 * np.cos(2 * np.pi * r / (0.22 * rim_w))
    refl = 0.15 * np.exp(-(((r - 0.55 * r_bot) / 2.0) ** 2))
    alb_rim = amber * bands[..., None]
    alb_wall = amber * (0.15 + 0.40 * wall)[..., None]
    alb_bot = rgb((0.16, 0.10, 0.05)) * (1.0 + 0.15 * mott)[..., None] + refl[..., None] * amber
    albedo = np.where((r >= r_in)[..., None], alb_rim, np.where((r >= r_bot)[..., None], alb_wall, alb_bot))
    gloss = np.where(r >= r_in, 0.9, np.where(r >= r_bot, 0.4, 0.5))
    alpha = np.clip(r_out - r + 0.5, 0.0, 1.0).astype(F32)
    bg = matte_background(rng, size, (0.20, 0.21, 0.23))
    obj = (albedo.astype(F32), h_obj.astype(F32), gloss.astype(F32))
    aux = {"r": r.astype(F32), "r_out": r_out, "r_in": r_in, "r_bot": r_bot, "amber": amber}
    return object_scene(obj, bg, alpha, light, r < r_out - 1, aux)


def _vial_broken(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Piece broken out of the rim: a jagged notch, darker, with a glinting fracture edge."""
    size, r = scene.size, scene.aux["r"]
    r_out, r_in = scene.aux["r_out"], scene.aux["r_in"]
    rad = lerp(0.025, 0.08, sev) * size
    band = (r > r_out - 0.35 * (r_out - r_in) - 1) & (r < r_out - 0.15 * (r_out - r_in))
    a = blob(rng, size, pick(rng, band), rad, rough=0.45, soft=0.7)
    a *= (r > r_in - 2).astype(F32) * scene.aux["alpha"]
    edge = 4.0 * a * (1.0 - a)
    scene.albedo = blend(scene.albedo, scene.aux["amber"] * 0.35, a) + (0.25 * edge)[..., None]
    scene.height = (scene.height - 7.0 * a).astype(F32)
    scene.gloss = blend(scene.gloss, 0.5, a)
    return a > 0


def _vial_contamination(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Particles, flakes or a fibre lying on the bottom of the vial."""
    size, r = scene.size, scene.aux["r"]
    where = r < 0.85 * scene.aux["r_bot"]
    a = np.zeros((size, size), F32)
    for _ in range(1 + int(rng.integers(0, 1 + int(4 * sev)))):
        a = np.maximum(a, blob(rng, size, pick(rng, where), lerp(0.006, 0.022, sev) * size,
                               rough=0.4, soft=0.8))
    if rng.uniform() < 0.4:
        pts = walk(rng, pick(rng, where), rng.uniform(0, 2 * np.pi), lerp(0.05, 0.18, sev) * size,
                   step=1.5, turn=0.25)
        a = np.maximum(a, stroke(size, pts, lerp(0.8, 1.3, sev))[0])
    a *= where
    colour = (0.03, 0.03, 0.03) if rng.uniform() < 0.5 else (0.75, 0.72, 0.65)
    scene.albedo = blend(scene.albedo, rgb(colour), a)
    scene.height = (scene.height + 0.8 * a).astype(F32)
    scene.gloss = blend(scene.gloss, 0.1, a)
    return a > 0


def _vial_crack(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Thin crack running across the rim, seen as a bright line in the glass."""
    size, r = scene.size, scene.aux["r"]
    r_out, r_in = scene.aux["r_out"], scene.aux["r_in"]
    rim = ((r > r_in - 1) & (r < r_out)).astype(F32)
    start = pick(rng, (r > r_in) & (r < r_out - 2))
    c = size / 2.0
    radial = np.arctan2(start[0] - c, start[1] - c) + rng.choice([0.0, np.pi]) + rng.normal(0, 0.4)
    pts = walk(rng, start, radial, lerp(0.05, 0.2, sev) * size, step=1.5, turn=0.1, jag=0.35)
    a, tube = stroke(size, pts, lerp(0.6, 1.4, sev))
    a *= rim
    scene.albedo = blend(scene.albedo, rgb((0.95, 0.90, 0.75)), a * lerp(0.3, 0.9, sev))
    scene.height = (scene.height - 0.8 * tube * a).astype(F32)
    return a > 0


# ---------------------------------------------------------------------------- washer (object)


def _washer_good(rng: np.random.Generator, size: int) -> Scene:
    """Keyed steel washer with lathe marks and a notch in its outer edge, on a rubber mat."""
    light = draw_light(rng, elevation=(45, 60), specular=0.7, shininess=(15, 30))
    y, x = pixel_grid(size)
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
    h_obj = 4.0 * smoothstep(-0.5, 2.5, sd)
    az = np.arctan2(light.direction[1], light.direction[0])
    sheen = 0.72 + 0.38 * np.cos(phi - az - np.pi / 2) ** 2
    lathe = profile(rng, r, 0.7)
    steel = jitter_rgb(rng, (0.62, 0.63, 0.66), 0.01)
    alb_obj = steel * (sheen * (1.0 + 0.07 * lathe + 0.04 * fbm(rng, size, size / 6, 3)))[..., None]
    obj = (alb_obj.astype(F32), h_obj.astype(F32), np.full((size, size), 0.45, F32))
    bg = matte_background(rng, size, (0.13, 0.14, 0.13))
    aux = {"r": r.astype(F32), "phi": phi.astype(F32), "r_out": r_out, "r_in": r_in, "key": key,
           "center": (float(cy), float(cx)), "sd": sd.astype(F32)}
    return object_scene(obj, bg, alpha, light, sd > 3.0, aux)


def _washer_scratch(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Straight scratch across the metal face, bright or dark."""
    where = scene.aux["sd"] > 1.0
    return surface_scratch(scene, rng, sev, where, length=(0.08, 0.4), width=(0.6, 1.5),
                           pale=(0.95, 0.95, 0.97))


def _washer_bent(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Bent outer edge: a sector of the rim pushed in or out and tilted out of plane."""
    size, r, phi = scene.size, scene.aux["r"], scene.aux["phi"]
    r_out, r_in = scene.aux["r_out"], scene.aux["r_in"]
    centre = float(rng.uniform(0.7, 2 * np.pi - 0.7)) + scene.aux["key"]
    half = float(np.deg2rad(lerp(15, 40, sev)))
    disp = float(rng.choice([-1.0, 1.0])) * lerp(1.0, 6.0, sev)
    dphi = np.angle(np.exp(1j * (phi - centre)))
    w_ang = np.where(np.abs(dphi) < half, np.cos(np.pi / 2 * dphi / half) ** 2, 0.0)
    mid = r_in + 0.4 * (r_out - r_in)
    w_rad = smoothstep(mid, r_out, r) * (1.0 - smoothstep(r_out + abs(disp) + 2, r_out + abs(disp) + 6, r))
    w = (w_ang * w_rad).astype(F32)
    obj_albedo, obj_height, obj_gloss = scene.aux["obj"]
    cy, cx = scene.aux["center"]
    y, x = pixel_grid(size)
    sy = y - disp * w * (y - cy) / np.maximum(r, 1.0)
    sx = x - disp * w * (x - cx) / np.maximum(r, 1.0)

    def warp(layer: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(layer, [sy, sx], order=1, mode="nearest").astype(F32)

    albedo = np.stack([warp(obj_albedo[..., k]) for k in range(3)], axis=-1)
    height = warp(obj_height) - lerp(0.5, 3.0, sev) * w
    alpha = warp(scene.aux["alpha"])
    bg_albedo, bg_height, bg_gloss = scene.aux["bg"]
    bent = w > 1e-4
    scene.albedo = np.where(bent[..., None], blend(bg_albedo, albedo, alpha), scene.albedo).astype(F32)
    scene.height = np.where(bent, blend(bg_height, height, alpha), scene.height).astype(F32)
    scene.gloss = np.where(bent, blend(bg_gloss, warp(obj_gloss), alpha), scene.gloss).astype(F32)
    return bent


def _washer_rust(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Corrosion: granular orange-brown patch, matte and slightly raised."""
    size = scene.size
    r = lerp(0.02, 0.08, sev) * size
    a = blob(rng, size, pick(rng, scene.region), r, rough=0.45, soft=max(1.0, 0.3 * r))
    grain = value_noise(rng, size, 2.0)
    a *= smoothstep(-0.8, 0.6, grain + lerp(-0.2, 0.8, sev)) * scene.aux["alpha"]
    tone = smoothstep(-1.0, 1.0, value_noise(rng, size, 3.0))[..., None]
    rust = rgb((0.42, 0.20, 0.09)) + (rgb((0.62, 0.36, 0.16)) - rgb((0.42, 0.20, 0.09))) * tone
    k = a * lerp(0.35, 1.0, sev)
    scene.albedo = blend(scene.albedo, rust, k)
    scene.gloss = blend(scene.gloss, 0.0, k)
    scene.height = (scene.height + 0.4 * a * grain).astype(F32)
    return a > 0.01


# ---------------------------------------------------------------------------- tablet (object)


def _tablet_good(rng: np.random.Generator, size: int) -> Scene:
    """Oblong white tablet with a score line, red speckles and a printed mark, on slate."""
    light = draw_light(rng, elevation=(45, 60), specular=0.5, shininess=(12, 25))
    y, x = pixel_grid(size)
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
    speck = smoothstep(2.6, 3.2, value_noise(rng, size, 1.2))
    cream = jitter_rgb(rng, (0.91, 0.89, 0.84), 0.01)
    base = cream * (1.0 + 0.025 * value_noise(rng, size, 1.5))[..., None]
    base = blend(base, rgb((0.78, 0.40, 0.33)), 0.8 * speck)
    ring = np.abs(np.hypot(u - 0.5 * half_len, v) - 0.065 * size)
    bar = np.maximum(np.abs(u + 0.5 * half_len) - 0.06 * size, np.abs(v) - 0.012 * size)
    stem = np.maximum(np.abs(u + 0.5 * half_len) - 0.012 * size, np.abs(v) - 0.06 * size)
    glyph = np.minimum(ring - 0.012 * size, np.minimum(bar, stem))
    ink = rgb((0.55, 0.15, 0.15))
    printed = (np.clip(0.5 - glyph, 0.0, 1.0) * 0.9).astype(F32)
    obj = (blend(base, ink, printed), h_obj.astype(F32), np.full((size, size), 0.18, F32))
    bg = matte_background(rng, size, (0.14, 0.16, 0.15))
    aux = {"sd": sd.astype(F32), "printed": printed, "ink": ink, "rad": rad, "unprinted": base.astype(F32),
           "center": (float(cy), float(cx))}
    return object_scene(obj, bg, alpha, light, sd < -2.0, aux)


def _tablet_crack(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Crack running in from the tablet's edge."""
    sd = scene.aux["sd"]
    start = pick(rng, (sd > -3.0) & (sd < -1.0))
    cy, cx = scene.aux["center"]
    inward = np.arctan2(cy - start[0], cx - start[1]) + rng.normal(0, 0.5)
    return paint_crack(scene, rng, sev, start, inward, length=(0.1, 0.4), width=(1.0, 2.2),
                       where=scene.aux["alpha"], dark=0.45, jag=0.3)


def _tablet_chip(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Missing piece: a bite out of the tablet's edge, showing the slate behind."""
    size, sd = scene.size, scene.aux["sd"]
    r = lerp(0.03, 0.09, sev) * size
    a = blob(rng, size, pick(rng, np.abs(sd) < 1.0), r, rough=0.4, soft=0.7)
    a *= scene.aux["alpha"]
    reveal_background(scene, a)
    return a > 0


def _tablet_print(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Print fault: part of the mark missing, a smeared double print, or an ink blot."""
    size, printed = scene.size, scene.aux["printed"]
    mode = int(rng.integers(3))
    if mode == 0:
        eraser = blob(rng, size, pick(rng, printed > 0.5), lerp(0.015, 0.05, sev) * size, soft=0.8)
        new = printed * (1.0 - eraser)
    elif mode == 1:
        shift = rng.normal(0.0, 1.0, 2)
        shift *= lerp(1.5, 5.0, sev) / (np.linalg.norm(shift) + 1e-9)
        ghost = ndimage.shift(printed, shift, order=1, mode="constant")
        new = np.maximum(printed, ghost * lerp(0.3, 0.8, sev))
    else:
        blot = blob(rng, size, pick(rng, (printed > 0.5) | (scene.aux["sd"] < -0.15 * size)),
                    lerp(0.008, 0.03, sev) * size, rough=0.4, soft=0.8)
        new = np.maximum(printed, 0.9 * blot)
    change = (np.abs(new - printed) * scene.aux["alpha"]).astype(F32)
    target = blend(scene.aux["unprinted"], scene.aux["ink"], new.astype(F32))
    scene.albedo = np.where((change > 0)[..., None], blend(scene.aux["bg"][0], target, scene.aux["alpha"]),
                            scene.albedo).astype(F32)
    return change > 0


def _tablet_contamination(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Foreign spot stuck to the coating: brown, blue or black, slightly raised."""
    size = scene.size
    a = blob(rng, size, pick(rng, scene.region), lerp(0.01, 0.05, sev) * size, rough=0.35, soft=1.0)
    a *= scene.aux["alpha"]
    colour = rgb(((0.30, 0.20, 0.10), (0.20, 0.30, 0.70), (0.08, 0.08, 0.08))[int(rng.integers(3))])
    scene.albedo = blend(scene.albedo, colour, a * lerp(0.3, 0.95, sev))
    scene.height = (scene.height + 0.6 * a).astype(F32)
    return a > 0


PAINTERS: dict[str, tuple[GoodFn, dict[str, DefectFn]]] = {
    "vial": (_vial_good, {"broken": _vial_broken, "contamination": _vial_contamination,
                          "crack": _vial_crack}),
    "washer": (_washer_good, {"scratch": _washer_scratch, "bent": _washer_bent, "rust": _washer_rust}),
    "tablet": (_tablet_good, {"crack": _tablet_crack, "chip": _tablet_chip, "print": _tablet_print,
                              "contamination": _tablet_contamination}),
}
