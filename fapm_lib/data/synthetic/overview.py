"""A figure of the generated set: per category one good image and one per defect type."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import DataError
from .catalogue import CATEGORIES


def _representative(root: Path, category: str, defect: str) -> tuple[Path, Path | None]:
    """Image (and mask) of one defect type with the median mask area: typical, not extreme."""
    images = sorted((root / category / "test" / defect).glob("*.png"))
    if defect == "good" or not images:
        return images[0], None
    masks = [root / category / "ground_truth" / defect / f"{p.stem}_mask.png" for p in images]
    areas = [int((np.asarray(Image.open(m)) > 0).sum()) for m in masks]
    k = int(np.argsort(areas)[len(areas) // 2])
    return images[k], masks[k]


def _aspect(image: Path) -> float:
    """Height over width of an image file."""
    with Image.open(image) as picture:
        return picture.height / picture.width


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
    # each row as high as its images at the column's width (rail is three times as wide as high)
    heights = [0.35 + 2.0 * _aspect(_representative(root, name, "good")[0]) for name in names]  # inches
    fig, axes = plt.subplots(len(names), cols, figsize=(2.1 * cols, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
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
