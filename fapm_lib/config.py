"""FAPM settings: one dataclass with the paper's defaults, loaded from YAML with strict checks."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

SAMPLING_MODES = ("adaptive", "fixed")
IMAGE_SCORES = ("max", "reweighted")
#: ``exact``: one greedy run per region; ``cells``: the greedy within cells of each region's vectors
#: (:mod:`fapm_lib.method.machinery.cells`); ``auto``: exact unless its estimated work is large.
CORESET_METHODS = ("auto", "exact", "cells")


#: The paper's region grid on its square input: 7 x 7 regions of a 224-pixel crop (32 pixels each).
PAPER_GRID = 7
#: A region's side at native resolution, in input pixels: the paper's regions (224 / 7), i.e. 4 x 4
#: stride-8 cells and 2 x 2 stride-16 cells, whatever the image's size.
DEFAULT_REGION_SIZE = 32


@dataclass
class FAPMConfig:
    """Every setting of a FAPM (or PatchCore) fit. Defaults follow the paper, except the
    backbone (``tf_efficientnet_lite0`` works offline; the paper's is ``wide_resnet50_2``) and
    the geometry: the whole image at its own resolution (``resize`` None), where the paper
    resizes to 256 and crops the centre 224 (``resize=256, crop_size=224``)."""

    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True          # False: random weights, for timing only
    resize: int | None = None        # the paper's protocol: shorter side resized to this; None: native
    crop_size: int | None = None     # with resize: centre crop; None: squashed to resize x resize
    scale: float = 1.0               # native: the image's sides times this first (0.5: 1/4 of the cost)
    tile: int = 512                  # larger inputs run through the backbone in tiles of at most tile x tile
    tile_overlap: int = 64           # pixels two neighbouring tiles share (their features blended there)
    pool_size: int = 3               # local neighbourhood aggregation (avg-pool, stride 1)
    grid: int | None = None          # with resize: regions per side of the square (None: 7, the paper's)
    region_size: int | None = None   # native: a region's side in pixels (None: 32, the paper's region)
    neighbour_regions: int = 0       # a query also searches the banks of this many rings of regions around its own
    sampling: str = "adaptive"       # "adaptive" (near/far) or "fixed" (one ratio everywhere)
    coreset_ratio: float = 0.1       # base ratio r
    adaptive_multiplier: float = 2.0  # far regions keep a * r
    coreset_projection: int | None = None  # random-projection dim for greedy selection; None: raw features
    coreset_method: str = "auto"     # "exact", "cells" (greedy within cells of each region) or "auto"
    coreset_cell_size: int | None = None  # vectors per cell with cells (None: 250)
    k: int = 4                       # neighbours the reweighted image score reads (>= 2); max reads only the nearest
    image_score: str = "max"         # "max" or "reweighted" (the official code's)
    blur_sigma: float = 4.0          # Gaussian blur of the upsampled map
    batch_size: int = 16             # images per batch at most (and at most 16.8 MP: data.mvtec.MAX_BATCH_PIXELS)
    seed: int = 0
    calibration_folds: int = 5       # k-fold calibration of the thresholds on train/good; 0: uncalibrated
    calibration_images: int | None = 2000  # held-out images scored (a seeded sample of larger fits); None: all
    false_alarm_rate: float = 0.01   # target fraction of normal images (and pixels) flagged
    max_memory: str | int | None = None  # e.g. "4GB": fit through a disk store within this peak RSS
    store_dir: str | None = None     # where that store's temporary folder goes (default: the temp dir)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first parameter out of range."""
        checks: list[tuple[str, bool, str]] = [
            ("coreset_ratio", 0.0 < self.coreset_ratio <= 1.0, "must be in (0, 1]"),
            ("adaptive_multiplier", self.adaptive_multiplier >= 1.0, "must be >= 1"),
            ("k", self.k >= 1, "must be >= 1"),
            ("resize", self.resize is None or self.resize >= 32, "must be >= 32"),
            ("grid", self.grid is None or self.grid >= 1, "must be >= 1"),
            ("grid", self.grid is None or self.resize is not None,
             "acts on the square input of resize / crop_size; at native resolution set region_size (pixels)"),
            ("region_size", self.region_size is None or (self.region_size >= 16 and self.region_size % 16 == 0),
             "must be a multiple of 16 pixels (the coarser feature stride), at least 16"),
            ("region_size", self.region_size is None or self.resize is None,
             "acts at native resolution; with resize / crop_size the grid sets the regions"),
            ("pool_size", self.pool_size >= 1 and self.pool_size % 2 == 1, "must be an odd number >= 1"),
            ("crop_size", self.crop_size is None or (self.resize is not None and 32 <= self.crop_size <= self.resize),
             "must be in [32, resize] and needs resize"),
            ("scale", 0.0 < self.scale <= 1.0, "must be in (0, 1] (a downscale before the model)"),
            ("scale", self.scale == 1.0 or self.resize is None,
             "acts at native resolution; with resize the protocol sets the size"),
            ("tile", self.tile >= 64 and self.tile % 32 == 0, "must be a multiple of 32 pixels, at least 64"),
            ("tile_overlap", 0 <= self.tile_overlap <= self.tile // 2 and self.tile_overlap % 16 == 0,
             "must be a multiple of 16 pixels in [0, tile / 2]"),
            ("neighbour_regions", 0 <= self.neighbour_regions <= 2, "must be 0, 1 or 2"),
            ("neighbour_regions", self.neighbour_regions == 0 or self.max_memory is None,
             "is not supported with max_memory (the bounded calibration searches each region's own bank)"),
            ("sampling", self.sampling in SAMPLING_MODES, f"must be one of {', '.join(SAMPLING_MODES)}"),
            ("image_score", self.image_score in IMAGE_SCORES, f"must be one of {', '.join(IMAGE_SCORES)}"),
            ("blur_sigma", self.blur_sigma >= 0, "must be >= 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("coreset_projection", self.coreset_projection is None or self.coreset_projection >= 1, "must be >= 1"),
            ("coreset_method", self.coreset_method in CORESET_METHODS, f"must be one of {', '.join(CORESET_METHODS)}"),
            ("coreset_cell_size", self.coreset_cell_size is None or self.coreset_cell_size >= 1, "must be >= 1"),
            ("coreset_cell_size", self.coreset_cell_size is None or self.coreset_method != "exact",
             "acts only with coreset_method cells or auto (exact runs one greedy over each whole region)"),
            ("k", self.image_score != "reweighted" or self.k >= 2,
             "must be >= 2 with image_score reweighted (with one neighbour its weight is 0 for every image)"),
            ("calibration_folds", self.calibration_folds == 0 or self.calibration_folds >= 2,
             "must be 0 (no calibration) or >= 2"),
            ("calibration_images", self.calibration_images is None or self.calibration_images >= 2,
             "must be >= 2, or None (score every training image)"),
            ("false_alarm_rate", 0.0 < self.false_alarm_rate < 1.0, "must be in (0, 1)"),
        ]
        if self.max_memory is not None:
            from .system.budget import parse_size

            parse_size(self.max_memory)
        elif self.store_dir is not None:
            raise ConfigError(f"store_dir={self.store_dir!r} is used only with max_memory (the disk store)")
        for name in ("coreset_ratio", "adaptive_multiplier", "blur_sigma", "false_alarm_rate", "scale"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a finite number")
        checks.append(("seed", -(2**63) <= self.seed < 2**64, "must be in [-2**63, 2**64) (torch.manual_seed)"))
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} {why}")

    @property
    def native(self) -> bool:
        """True for the native geometry (the whole image, no resize / crop protocol)."""
        return self.resize is None

    @property
    def input_size(self) -> int | None:
        """Side of the square network input of the paper's protocol; None at native resolution
        (the model's canvas comes from its training images)."""
        return None if self.resize is None else (self.crop_size or self.resize)

    @property
    def grid_side(self) -> int:
        """Regions per side of the protocol's square: ``grid``, or the paper's 7."""
        return self.grid or PAPER_GRID

    @property
    def region_pixels(self) -> int | None:
        """A region's side in input pixels at native resolution (None with the protocol, whose
        ``grid`` divides the feature maps instead)."""
        return (self.region_size or DEFAULT_REGION_SIZE) if self.resize is None else None

    def input_description(self) -> str:
        """The geometry in words, for summaries: the protocol's resize / crop and grid, or native
        resolution with its scale, region size, tiles and neighbour search."""
        if not self.native:
            crop = f", centre crop {self.crop_size}" if self.crop_size else f" x {self.resize} (squashed)"
            return f"resize {self.resize}{crop}, grid {self.grid_side}x{self.grid_side}"
        scale = "native resolution" if self.scale == 1.0 else f"native resolution x {self.scale:g}"
        reach = f", searching {self.neighbour_regions} ring(s) of neighbour regions" if self.neighbour_regions else ""
        return (f"{scale}, regions of {self.region_pixels} px, tiles of {self.tile} px "
                f"(overlap {self.tile_overlap}){reach}")

    @property
    def search_k(self) -> int:
        """Neighbours per query that scoring reads (:func:`neighbours_read`)."""
        return neighbours_read(self.image_score, self.k)

    def replace(self, **changes: Any) -> "FAPMConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-ready."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "FAPMConfig":
        """Build from a mapping, refusing unknown keys and wrong types (ConfigError names the key)."""
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(sorted(known))})")
            if not _type_ok(value, hints[key]):
                raise ConfigError(f"{source}: key '{key}' expects {_type_name(hints[key])}, "
                                  f"got {type(value).__name__} {value!r}")
        try:
            return cls(**{k: (float(v) if hints[k] is float and isinstance(v, int) else v) for k, v in values.items()})
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def neighbours_read(image_score: str, k: int) -> int:
    """The rule for how many nearest distances scoring reads: ``k`` for the re-weighted image
    score; 1 for ``max``, since the maps and the max score use the nearest distance only."""
    return k if image_score == "reweighted" else 1


def check_k_acts(values: dict[str, Any], source: str = "options", flag: str = "k") -> None:
    """Refuse an explicitly given ``k`` when the image score is ``max``: the map and the max score
    read only the nearest distance, so k would change nothing (ConfigError naming ``flag``)."""
    if "k" in values and values.get("image_score", FAPMConfig.image_score) == "max":
        raise ConfigError(f"{source}: {flag}={values['k']!r} acts only with image_score reweighted "
                          "(the max score and the maps read the nearest distance only); drop it or set "
                          "image_score reweighted")


#: Settings that shape the memories (fixed once fitted); the others act when scoring.
FIT_KEYS = ("backbone", "pretrained", "resize", "crop_size", "scale", "tile", "tile_overlap", "pool_size", "grid",
            "region_size", "neighbour_regions", "sampling", "coreset_ratio",
            "adaptive_multiplier", "coreset_projection", "coreset_method", "coreset_cell_size", "seed",
            "calibration_folds", "calibration_images", "blur_sigma")


def flag_name(key: str) -> str:
    """The command-line flag of a config key: ``coreset_ratio`` -> ``--coreset-ratio``."""
    return "--" + key.replace("_", "-")

#: Keys a YAML config may carry besides the model's own settings.
RUN_KEYS = ("category", "data_root")


def load_yaml_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a YAML config -> (model settings, run settings such as ``category``)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(raw).__name__}")
    run = {k: raw.pop(k) for k in RUN_KEYS if k in raw}
    for key, value in run.items():
        if not isinstance(value, str):
            raise ConfigError(f"{path}: key '{key}' expects str, got {type(value).__name__} {value!r}")
    FAPMConfig.from_dict(raw, source=str(path))  # validate now, with the file's name in errors
    check_k_acts(raw, str(path))
    return raw, run


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is typing.Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
