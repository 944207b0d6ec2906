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

Modules: ``shading`` (scene maps, light, shading, sensor noise), ``materials`` (noise, colours,
blobs, strokes), ``defects`` (scratch, crack, stain, shared by several categories),
``textures`` and ``objects`` (one module per kind of category: good scenes and defects),
``catalogue`` (the categories, argument checks), ``render`` (one sample and its mask),
``writer`` (folders, atomic writes, the completion marker), ``overview`` (a figure).
"""
from __future__ import annotations

from .catalogue import CATEGORIES, MIN_SIZE, CategorySpec, SyntheticSample
from .overview import plot_overview
from .render import render_sample
from .writer import MARKER, VERSION, ensure_dataset, generate_category, generate_dataset

__all__ = [
    "CATEGORIES",
    "MARKER",
    "MIN_SIZE",
    "VERSION",
    "CategorySpec",
    "SyntheticSample",
    "ensure_dataset",
    "generate_category",
    "generate_dataset",
    "plot_overview",
    "render_sample",
]
