"""The six generated categories (their kinds and defect types), sample type, argument checks."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from ...errors import DataError
from .long_part import ASPECT as LONG_ASPECT
from .long_part import DEFECTS as LONG_DEFECTS

MIN_SIZE = 64


@dataclass(frozen=True)
class CategorySpec:
    """One generated category: its kind, its defect types and what they look like."""

    name: str
    kind: str                              # "texture" | "object" | "long" (not square: see ``shape``)
    defects: tuple[str, ...]
    description: str
    defect_notes: Mapping[str, str] = field(default_factory=dict)
    aspect: tuple[int, int] = (1, 1)       # the image is (aspect[0] * size, aspect[1] * size) pixels

    def shape(self, size: int) -> tuple[int, int]:
        """``(height, width)`` of this category's images at ``size``."""
        return self.aspect[0] * size, self.aspect[1] * size


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered sample.

    image: [H, W, 3] uint8, as written to disk (H = W but for the long category).
    clean: [H, W, 3] uint8, the same draw without the defect (``image`` for good samples).
    mask:  [H, W] uint8 in {0, 255}, or None for good samples.
    """

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray | None


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
        CategorySpec("rail", "long", tuple(LONG_DEFECTS),
                     "Machined steel rail, three times as wide as high: brushed lengthwise, two grooves, a hole at "
                     "each end, chamfered corners, on a dark belt; defects of 0.05 % to 0.5 % of the image anywhere, "
                     "ends and corners included.", MappingProxyType(dict(LONG_DEFECTS)), LONG_ASPECT),
    )
}


def check_category(category: str) -> CategorySpec:
    if category not in CATEGORIES:
        raise DataError(f"unknown synthetic category {category!r}; valid: {', '.join(CATEGORIES)}")
    return CATEGORIES[category]


def check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < MIN_SIZE:
        raise DataError(f"synthetic image size must be an integer >= {MIN_SIZE}, got {size!r}")
    return int(size)


def check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_count(name: str, value: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
