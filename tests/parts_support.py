"""Tiny 64 px parts for tests that fit, calibrate and run the command: a smooth shaded disc on a plain
background, defects as dark squares with exact masks, and the small settings those tests fit with."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fapm_lib import FAPMConfig

CATEGORY = "part"
SIZE = 64
TINY = FAPMConfig(resize=SIZE, crop_size=SIZE, grid=2, batch_size=8, coreset_ratio=0.5)
#: ``TINY`` as the YAML file ``fapm ... --config`` reads.
TINY_YAML = f"resize: {SIZE}\ncrop_size: {SIZE}\ngrid: 2\nbatch_size: 8\ncoreset_ratio: 0.5\n"


def part_image(seed: int, defect: bool = False) -> np.ndarray:
    """A smooth shaded part on a plain background (small noise); ``defect``: a dark square."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    disc = ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.12).astype(float)
    gray = 0.35 + 0.4 * disc * (0.7 + 0.3 * x) + rng.normal(0, 0.01, (SIZE, SIZE))
    if defect:
        top, left = rng.integers(14, 36, 2)
        gray[top : top + 12, left : left + 12] = 0.02
    rgb = np.stack([gray, gray * 0.95, gray * 0.9], -1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def labelled_part(seed: int) -> np.ndarray:
    """A normal part with a bright label on it, which the training parts never have."""
    image = part_image(seed)
    image[20:34, 18:46] = (235, 235, 120)
    return image


def write_tree(root: Path, n_train: int = 10, n_good: int = 3, n_bad: int = 3, seed: int = 0) -> Path:
    """MVTec layout under ``root/part``: train/good, test/good, test/crack with masks."""
    cat = root / CATEGORY
    for i in range(n_train):
        (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(part_image(seed + i)).save(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        (cat / "test" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(part_image(seed + 500 + i)).save(cat / "test" / "good" / f"{i:03d}.png")
    for i in range(n_bad):
        for sub in ("test/crack", "ground_truth/crack"):
            (cat / sub).mkdir(parents=True, exist_ok=True)
        image = part_image(seed + 900 + i, defect=True)
        Image.fromarray(image).save(cat / "test" / "crack" / f"{i:03d}.png")
        mask = (image[..., 0] < 10).astype(np.uint8) * 255
        Image.fromarray(mask).save(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root
