"""The texture categories: fabric, woodgrain, ceramic (good scenes and their defects)."""
from __future__ import annotations

import numpy as np

from .defects import paint_crack, paint_stain, surface_scratch
from .materials import blend, blob, fbm, jitter_rgb, lerp, pick, profile, rgb, smoothstep, stroke, value_noise, walk
from .shading import F32, DefectFn, GoodFn, Scene, draw_light, pixel_grid

# ---------------------------------------------------------------------------- fabric (texture)


def _fabric_good(rng: np.random.Generator, size: int) -> Scene:
    """Denim-like 2/1 twill: indigo warp floats over off-white weft, with slubs and fading."""
    light = draw_light(rng, elevation=(35, 50), specular=0.3, shininess=(8, 14))
    y, x = pixel_grid(size)
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
    fibre_v = value_noise(rng, size, 3 * pitch, 1.0)
    fibre_h = value_noise(rng, size, 1.0, 3 * pitch)
    warp_col = jitter_rgb(rng, (0.17, 0.25, 0.43), 0.008)
    weft_col = jitter_rgb(rng, (0.62, 0.64, 0.66), 0.01)
    warp = warp_col * (warp_gain[ii % 512] * (0.78 + 0.22 * sa) * (1 + 0.10 * fibre_v))[..., None]
    weft = weft_col * (weft_gain[jj % 512] * (0.80 + 0.20 * sb) * (1 + 0.08 * fibre_h))[..., None]
    albedo = np.where(warp_top[..., None], warp, weft)
    albedo = albedo * (1.0 + 0.06 * fbm(rng, size, size / 3, 3))[..., None]
    height = 1.4 * np.where(warp_top, h_warp, h_weft)
    gloss = np.full((size, size), 0.05, F32)
    return Scene(albedo.astype(F32), height.astype(F32), gloss, light,
                 np.ones((size, size), bool), {"pitch": pitch, "warp": warp_col, "weft": weft_col})


def _fabric_hole(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Torn hole showing the dark backing, with frayed, lifted thread ends at its rim."""
    size = scene.size
    r = lerp(0.015, 0.07, sev) * size
    a = blob(rng, size, pick(rng, scene.region, margin=r), r, rough=0.35, soft=0.8)
    fray = 4.0 * a * (1.0 - a)
    backing = rgb((0.05, 0.05, 0.06)) * (1.0 + 0.3 * value_noise(rng, size, 1.5))[..., None]
    scene.albedo = blend(scene.albedo, backing, a)
    scene.height = (blend(scene.height, -2.0, a) + 0.8 * fray).astype(F32)
    scene.gloss = blend(scene.gloss, 0.0, a)
    return a > 0


def _fabric_stain(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Oil, tea or rust-coloured liquid stain soaked into the weave."""
    return paint_stain(scene, rng, sev, scene.region, radius=(0.04, 0.12),
                       colours=((0.55, 0.42, 0.25), (0.35, 0.35, 0.33), (0.75, 0.55, 0.25)),
                       strength=(0.12, 0.6))


def _fabric_thread(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Loose foreign thread lying on the cloth: a thin raised curve, sometimes of matching colour."""
    size = scene.size
    start = pick(rng, scene.region, margin=size * 0.15)
    pts = walk(rng, start, rng.uniform(0, 2 * np.pi), lerp(0.12, 0.5, sev) * size, turn=0.15)
    a, tube = stroke(size, pts, lerp(1.0, 2.4, sev))
    if sev < 0.35:
        colour = scene.aux["warp"] * 1.35 if rng.uniform() < 0.5 else scene.aux["weft"] * 0.92
    else:
        colour = rgb(((0.80, 0.15, 0.10), (0.95, 0.95, 0.90), (0.08, 0.08, 0.08),
                      (0.85, 0.70, 0.20))[int(rng.integers(4))])
    scene.albedo = blend(scene.albedo, colour * (0.75 + 0.25 * tube)[..., None], a)
    scene.height = blend(scene.height, 1.6 + 1.2 * tube, a)
    return a > 0


# ---------------------------------------------------------------------------- woodgrain (texture)


def _wood_maps(rng: np.random.Generator, size: int, angle: float, period: float,
               light_col: np.ndarray, dark_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plank-sawn grain running at ``angle`` degrees from vertical: (albedo [H, W, 3], height [H, W])."""
    y, x = pixel_grid(size)
    th = np.deg2rad(angle)
    u = np.cos(th) * x - np.sin(th) * y          # across the grain
    v = np.sin(th) * x + np.cos(th) * y          # along the grain
    warp = fbm(rng, size, size / 2, 3) * (0.012 * size) + value_noise(rng, size, size / 12) * (0.003 * size)
    bend = float(rng.uniform(-0.25, 0.25)) * (v - size / 2) ** 2 / size
    t = (u + warp + bend) / period + 0.6 * profile(rng, u / period, 1.5) + float(rng.uniform(0, 1))
    ring = t - np.floor(t)
    late = smoothstep(0.6, 0.9, ring) * (1.0 - smoothstep(0.93, 1.0, ring))
    streak = profile(rng, u + 0.3 * warp, 0.8)
    pores = smoothstep(1.8, 2.8, -value_noise(rng, size, 6.0, 1.0))
    mott = fbm(rng, size, size / 5, 3)
    tone = np.clip(0.55 * late + 0.12 * streak + 0.2, 0.0, 1.0)
    albedo = light_col + (dark_col - light_col) * tone[..., None]
    albedo = albedo * ((1.0 + 0.05 * mott) * (1.0 - 0.35 * pores))[..., None]
    height = -0.2 * late + 0.08 * streak - 0.4 * pores
    return albedo.astype(F32), height.astype(F32)


def _woodgrain_good(rng: np.random.Generator, size: int) -> Scene:
    """Varnished light oak with growth rings, fibre streaks and pores, grain about vertical."""
    light = draw_light(rng, elevation=(40, 60), specular=0.6, shininess=(15, 30))
    angle = float(rng.uniform(-4, 4))
    period = size / float(rng.uniform(16, 22))
    light_col = jitter_rgb(rng, (0.78, 0.58, 0.38), 0.015)
    dark_col = jitter_rgb(rng, (0.55, 0.34, 0.19), 0.015)
    albedo, height = _wood_maps(rng, size, angle, period, light_col, dark_col)
    gloss = np.full((size, size), 0.12, F32)
    aux = {"angle": angle, "period": period, "light_col": light_col, "dark_col": dark_col}
    return Scene(albedo, height, gloss, light, np.ones((size, size), bool), aux)


def _woodgrain_scratch(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Pale scratch through the varnish, straight-ish, any direction."""
    return surface_scratch(scene, rng, sev, scene.region, length=(0.15, 0.6), width=(0.7, 1.8),
                           pale=(0.93, 0.84, 0.68))


def _woodgrain_crack(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Dark split following the grain, tapering at both ends."""
    size = scene.size
    heading = np.pi / 2 - np.deg2rad(scene.aux["angle"]) + rng.choice([0.0, np.pi]) + rng.normal(0, 0.15)
    start = pick(rng, scene.region, margin=size * 0.2)
    return paint_crack(scene, rng, sev, start, heading, length=(0.12, 0.55), width=(1.0, 3.2),
                       where=scene.region.astype(F32), dark=0.2, jag=0.2)


def _woodgrain_stain(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Water or coffee mark: a darker patch with a tide line."""
    return paint_stain(scene, rng, sev, scene.region, radius=(0.05, 0.13),
                       colours=((0.55, 0.45, 0.38), (0.45, 0.30, 0.18), (0.70, 0.68, 0.66)),
                       strength=(0.15, 0.7))


def _woodgrain_patch(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Foreign wood pasted in: an inlay whose grain runs at another angle and shade."""
    size = scene.size
    r = lerp(0.05, 0.14, sev) * size
    a = blob(rng, size, pick(rng, scene.region, margin=r), r, rough=0.2, soft=0.8)
    turn = rng.choice([-1.0, 1.0]) * lerp(15, 90, sev)
    shade = 1.0 + rng.choice([-1.0, 1.0]) * lerp(0.02, 0.18, sev)
    albedo, height = _wood_maps(rng, size, scene.aux["angle"] + turn,
                                scene.aux["period"] * rng.uniform(0.5, 1.1),
                                scene.aux["light_col"] * shade, scene.aux["dark_col"] * shade)
    scene.albedo = blend(scene.albedo, albedo, a)
    scene.height = blend(scene.height, height, a)
    return a > 0


# ---------------------------------------------------------------------------- ceramic (texture)


def _ceramic_good(rng: np.random.Generator, size: int) -> Scene:
    """Glazed celadon tiles with bevelled edges and speckles, set in grey grout."""
    light = draw_light(rng, elevation=(62, 75), specular=0.45, shininess=(25, 50))
    y, x = pixel_grid(size)
    pitch, grout = size / 3.2, max(2.0, 0.028 * size)
    th = float(np.deg2rad(rng.uniform(-1.5, 1.5)))
    oy, ox = (float(t) for t in rng.uniform(0, pitch, 2))
    u = np.cos(th) * x + np.sin(th) * y + ox
    v = -np.sin(th) * x + np.cos(th) * y + oy
    i, j = np.floor(u / pitch), np.floor(v / pitch)
    a, b = u - i * pitch, v - j * pitch
    edge = np.minimum(np.minimum(a, pitch - a), np.minimum(b, pitch - b)) - grout / 2
    tile = np.clip(edge + 0.5, 0.0, 1.0)
    grain = value_noise(rng, size, 1.5)
    bevel = max(2.0, 0.016 * size)
    height = np.where(edge < 0, -0.6 + 0.25 * grain, 2.5 * smoothstep(-0.5, bevel, edge))
    tile_shift = rng.normal(0.0, 0.012, (16, 16, 3)).astype(F32)
    glaze = jitter_rgb(rng, (0.55, 0.66, 0.60), 0.01) + tile_shift[i.astype(int) % 16, j.astype(int) % 16]
    mott = fbm(rng, size, size / 10, 3)
    speck = smoothstep(2.2, 3.0, value_noise(rng, size, 1.0))
    alb_tile = glaze * ((1.0 + 0.035 * mott) * (1.0 - 0.45 * speck))[..., None]
    alb_grout = jitter_rgb(rng, (0.70, 0.69, 0.66), 0.01) * (1.0 + 0.08 * grain)[..., None]
    albedo = blend(alb_grout, alb_tile, tile)
    gloss = (0.55 * tile).astype(F32)
    aux = {"edge": edge.astype(F32), "tile": tile.astype(F32), "pitch": pitch}
    return Scene(albedo, height.astype(F32), gloss, light, edge > 0.1 * pitch, aux)


def _ceramic_crack(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Hairline to open crack in the glaze, sometimes branching."""
    start = pick(rng, scene.region, margin=scene.size * 0.1)
    return paint_crack(scene, rng, sev, start, rng.uniform(0, 2 * np.pi), length=(0.08, 0.35),
                       width=(0.6, 1.6), where=scene.aux["tile"], dark=0.35)


def _ceramic_chip(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Chipped tile edge: glaze broken off, showing the rough terracotta body."""
    size = scene.size
    edge = scene.aux["edge"]
    r = lerp(0.02, 0.07, sev) * size
    a = blob(rng, size, pick(rng, (edge > 0) & (edge < 1.5), margin=r), r, rough=0.4, soft=0.8)
    a *= scene.aux["tile"]
    grain = value_noise(rng, size, 1.2)
    body = rgb((0.78, 0.60, 0.46)) * (1.0 + 0.10 * grain)[..., None]
    scene.albedo = blend(scene.albedo, body, a)
    scene.height = blend(scene.height, -0.5 + 0.4 * grain, a)
    scene.gloss = blend(scene.gloss, 0.0, a)
    return a > 0


def _ceramic_glaze(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Glaze colour fault: a burnt, bluish or bare patch on a tile, matte."""
    size = scene.size
    r = lerp(0.04, 0.12, sev) * size
    a = blob(rng, size, pick(rng, scene.region, margin=r * 0.5), r, rough=0.3, soft=max(1.0, 0.4 * r))
    a *= scene.aux["tile"]
    shift = rgb(((1.25, 1.02, 0.70), (0.78, 0.85, 1.20), (1.28, 1.26, 1.24))[int(rng.integers(3))])
    k = a * lerp(0.12, 0.6, sev)
    scene.albedo = blend(scene.albedo, np.clip(scene.albedo * shift, 0.0, 1.0), k)
    scene.gloss = (scene.gloss * (1.0 - 0.7 * k)).astype(F32)
    return a > 0.02


def _ceramic_dirt(scene: Scene, rng: np.random.Generator, sev: float) -> np.ndarray:
    """Grimy smudge of dark grains on tile and grout."""
    size = scene.size
    r = lerp(0.03, 0.09, sev) * size
    a = blob(rng, size, pick(rng, np.ones_like(scene.region), margin=r), r, rough=0.4,
             soft=max(1.0, 0.35 * r))
    a *= 0.35 + 0.65 * smoothstep(-0.3, 0.8, value_noise(rng, size, 1.5))
    k = a * lerp(0.25, 0.85, sev)
    scene.albedo = blend(scene.albedo, rgb((0.22, 0.20, 0.17)), k)
    scene.gloss = (scene.gloss * (1.0 - k)).astype(F32)
    return a > 0.02


PAINTERS: dict[str, tuple[GoodFn, dict[str, DefectFn]]] = {
    "fabric": (_fabric_good, {"hole": _fabric_hole, "stain": _fabric_stain, "thread": _fabric_thread}),
    "woodgrain": (_woodgrain_good, {"scratch": _woodgrain_scratch, "crack": _woodgrain_crack,
                                    "stain": _woodgrain_stain, "patch": _woodgrain_patch}),
    "ceramic": (_ceramic_good, {"crack": _ceramic_crack, "chip": _ceramic_chip,
                                "glaze": _ceramic_glaze, "dirt": _ceramic_dirt}),
}
