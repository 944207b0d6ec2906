"""Render one sample: the good scene of its own random draw, then (maybe) one defect and its exact mask."""
from __future__ import annotations

import zlib

import numpy as np
from scipy import ndimage

from ...errors import DataError
from .catalogue import SyntheticSample, check_category, check_seed, check_size
from .long_part import render_long
from .objects import PAINTERS as OBJECT_PAINTERS
from .shading import DefectFn, GoodFn, quantize, sensor_noise, shade_scene
from .textures import PAINTERS as TEXTURE_PAINTERS

_CHANGE = 1.0 / 255.0       # a pixel counts as changed from one grey level on
_SPREAD = 3                 # px a painted change may spread (normals + optical blur)
_TRIES = 8                  # draws of a defect before it must be visible

#: category -> (good-scene painter, {defect: defect painter})
PAINTERS: dict[str, tuple[GoodFn, dict[str, DefectFn]]] = {**TEXTURE_PAINTERS, **OBJECT_PAINTERS}


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
                  seed: int = 0, size: int = 256, shift: tuple[float, float] = (0.0, 0.0)) -> SyntheticSample:
    """Render one image exactly as :func:`generate_category` writes it.

    ``split`` is "train" or "test"; ``defect`` is "good" or one of the category's defects
    (test split only). Returns image/clean [H, W, 3] uint8 and mask [H, W] uint8 (or None).
    ``shift`` (the long category only): the part moved by these fractions of the image's width
    and height, for measuring parts that do not sit still.
    """
    spec = check_category(category)
    size, seed = check_size(size), check_seed(seed)
    if split not in ("train", "test") or (defect != "good" and (split != "test" or defect not in spec.defects)):
        raise DataError(f"no {split}/{defect} images in synthetic category {category!r}; "
                        f"defects: {', '.join(spec.defects)}")
    rng = _rng(seed, category, split, defect, int(index))
    if spec.kind == "long":
        return SyntheticSample(*render_long(split, defect, rng, size, shift))
    if shift != (0.0, 0.0):
        raise DataError(f"shift: only the long category moves its part ({category!r} does not)")
    good_fn, painters = PAINTERS[category]
    scene = good_fn(rng, size)
    noise = sensor_noise(rng, size, scene.light.noise)
    clean = shade_scene(scene)
    good = quantize(clean + noise)
    if defect == "good":
        return SyntheticSample(good, good, None)
    min_area = max(12, int(4e-4 * size * size))
    for attempt in range(_TRIES):
        severity = max(float(rng.uniform()), attempt / (_TRIES - 1))
        bad = scene.copy()
        painted = painters[defect](bad, rng, severity)
        shaded = shade_scene(bad)
        mask = _defect_mask(painted, shaded - clean)
        if mask.sum() >= min_area:
            break
    image = np.where(mask[..., None], quantize(shaded + noise), good)
    return SyntheticSample(image, good, mask.astype(np.uint8) * 255)
