"""Reader for the MVTec AD folder layout (the benchmark itself or users' own images).

Layout::

    <root>/<category>/train/good/*                       normal training images
    <root>/<category>/test/<type>/*                      type ``good`` is normal, any other a defect
    <root>/<category>/ground_truth/<type>/<stem>_mask.png   one mask per defect image

Files are recognised by extension (``IMAGE_EXTENSIONS``, case-insensitive); hidden files and
folders (name starting with ``.``) and anything else (``notes.txt``, ``Thumbs.db``) are ignored.
Samples are sorted by type, then file name. Every problem with the data is reported as a
one-line :class:`~fapm_lib.errors.DataError` naming the file or folder.

Decoding rules (:func:`load_image`): EXIF orientation is applied; alpha is dropped (not
composited); palette, CMYK, grayscale and 1-bit images become RGB; 16-bit grayscale is scaled to
8 bit over its full range (``round(v / 257)``). Truncated files are errors, never padded.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, JpegImagePlugin
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .errors import ConfigError, DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
MAX_IMAGE_PIXELS = 16384 * 16384
SHARED_DATA_ENV = "FAPM_SHARED_DATA"
GOOD = "good"
MASK_SUFFIX = "_mask.png"

# Pillow's default limit (~89 Mpixel) is raised so 16k x 16k images open; anything larger is
# refused by load_image as a possible decompression bomb.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

Split = Literal["train", "test"]
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


# --------------------------------------------------------------------------- transform


@dataclass(frozen=True)
class Transform:
    """Resize the shorter side to ``resize`` (bilinear, aspect kept), then centre-crop.

    ``crop_size=None`` means no crop: the image is resized to ``resize x resize`` instead.
    Same geometry as torchvision ``Resize(resize)`` + ``CenterCrop(crop_size)``.
    """

    resize: int = 256
    crop_size: int | None = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.resize < 1:
            raise ConfigError(f"resize must be >= 1, got {self.resize}")
        if self.crop_size is not None and not 1 <= self.crop_size <= self.resize:
            raise ConfigError(f"crop_size must be in 1..resize ({self.resize}), got {self.crop_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean and std need 3 values each, std > 0; got {self.mean}, {self.std}")

    @property
    def output_size(self) -> int:
        """Side S of the square output."""
        return self.resize if self.crop_size is None else self.crop_size

    def image(self, pil: Image.Image) -> Tensor:
        """RGB image (any size) -> normalised float32 tensor [3, S, S]."""
        rgb = pil if pil.mode == "RGB" else to_rgb(pil)
        pixels = np.asarray(self._geometry(rgb), dtype=np.float32) / 255.0
        x = torch.from_numpy(pixels).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((x - mean) / std).contiguous()

    def mask(self, pil: Image.Image) -> Tensor:
        """Mask (values 0..255, > 127 is defect) -> bool tensor [S, S], same geometry as image()."""
        unit = np.asarray(pil.convert("L"), dtype=np.float32) / 255.0
        resized = self._geometry(Image.fromarray(unit))
        return torch.from_numpy(np.asarray(resized) > 0.5)

    def _geometry(self, pil: Image.Image) -> Image.Image:
        """Bilinear resize, then centre crop."""
        resized = pil.resize(self._resized_size(pil.size), Image.Resampling.BILINEAR)
        return resized if self.crop_size is None else _centre_crop(resized, self.crop_size)

    def _resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) after resizing; torchvision's rounding for the longer side."""
        if self.crop_size is None:
            return self.resize, self.resize
        width, height = size
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize


def _centre_crop(pil: Image.Image, side: int) -> Image.Image:
    """Centre crop to side x side (torchvision's offset rounding)."""
    width, height = pil.size
    left = round((width - side) / 2.0)
    top = round((height - side) / 2.0)
    return pil.crop((left, top, left + side, top + side))


# --------------------------------------------------------------------------- decoding


def to_rgb(pil: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha dropped, 16-bit scaled by 1/257, gray replicated."""
    if pil.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l(pil).convert("RGB")
    if pil.mode == "P":  # via RGBA so palette transparency is read, then dropped
        return pil.convert("RGBA").convert("RGB")
    return pil.convert("RGB")


def _sixteen_bit_to_l(pil: Image.Image) -> Image.Image:
    """16-bit grayscale (I;16 or I holding 0..65535) -> 8-bit L, rounding v / 257."""
    values = np.asarray(pil).astype(np.int64).clip(0, 65535)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8))


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type name when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _problem(path: Path, exc: BaseException) -> str:
    """Short description of why ``path`` could not be decoded."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if path.is_file() and path.stat().st_size == 0:
        return "cannot read image (empty file, 0 bytes)"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"image too large, possible decompression bomb ({_one_line(exc)})"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "cannot read image (not an image, or an unsupported format)"
    return f"cannot read image ({_one_line(exc)})"


def _upright_size(pil: Image.Image) -> tuple[int, int]:
    """Full-resolution (width, height) once EXIF orientation is applied."""
    width, height = pil.size
    if pil.getexif().get(_ORIENTATION_TAG, 1) in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def _draft_for(pil: Image.Image, min_side: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale while its shorter side stays >= 2 * min_side."""
    ratio = 2 * min_side / min(pil.size)
    if isinstance(pil, JpegImagePlugin.JpegImageFile) and ratio < 1:
        pil.draft(None, (math.ceil(pil.width * ratio), math.ceil(pil.height * ratio)))


def _decode(path: Path, min_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``path`` fully -> (upright RGB image, full-resolution upright size)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as pil:
                full_size = _upright_size(pil)
                if min_side is not None:
                    _draft_for(pil, min_side)
                pil.load()
                return to_rgb(ImageOps.exif_transpose(pil)), full_size
    except (*_DECODE_ERRORS, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: {_problem(path, exc)}") from exc


def load_image(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Read an image file as an upright RGB PIL image.

    With ``min_side``, a large JPEG may be decoded at reduced scale (``Image.draft``), keeping
    its shorter side >= ``2 * min_side``. Raises DataError("<path>: <problem>").
    """
    return _decode(Path(path), min_side)[0]


def load_mask(path: str | os.PathLike, expected_size: tuple[int, int]) -> Image.Image:
    """Read a mask of any mode as an 'L' image of 0/255 (> 127 after conversion to L is defect).

    ``expected_size`` is its image's (width, height); a mismatch raises DataError.
    """
    mask, size = _decode(Path(path), None)
    if size != tuple(expected_size):
        raise DataError(
            f"{path}: mask size {size[0]}x{size[1]} differs from its image size "
            f"{expected_size[0]}x{expected_size[1]}"
        )
    return mask.convert("L").point(lambda v: 255 if v > 127 else 0)


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class Sample:
    """One image of a split: label 0 good, 1 defect; ``mask_path`` None when it has no mask."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None


def _is_visible(path: Path) -> bool:
    """False for hidden names (leading dot: .DS_Store, ._x.png, .ipynb_checkpoints)."""
    return not path.name.startswith(".")


def _image_files(folder: Path) -> list[Path]:
    """Visible image files directly in ``folder`` (none if it is missing), sorted by name."""
    if not folder.is_dir():
        return []
    files = (p for p in folder.iterdir() if _is_visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS)
    return sorted((p for p in files if p.is_file()), key=lambda p: p.name)


def _subfolders(folder: Path) -> list[str]:
    """Names of the visible folders in ``folder``, sorted."""
    return sorted(p.name for p in folder.iterdir() if _is_visible(p) and p.is_dir())


def _preview(names: list[str], limit: int = 20) -> str:
    """Comma-separated names, at most ``limit`` of them."""
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... and {len(names) - limit} more"


def _category_dir(root: Path, category: str) -> Path:
    """``root / category``, checked to exist."""
    if not root.is_dir():
        raise DataError(f"{root}: data root does not exist")
    folder = root / category
    if not category or not folder.is_dir():
        raise DataError(
            f"{root}: category '{category}' not found; available: {_preview(_subfolders(root))}"
        )
    return folder


def _train_samples(category_dir: Path) -> list[Sample]:
    folder = category_dir / "train" / GOOD
    files = _image_files(folder)
    if not files:
        raise DataError(f"no training images in {folder}")
    return [Sample(p, 0, GOOD, None) for p in files]


def _mask_paths(images: list[Path], mask_dir: Path) -> list[Path]:
    """Expected mask of each defect image, checked to exist."""
    masks = [mask_dir / f"{p.stem}{MASK_SUFFIX}" for p in images]
    present = [m.is_file() for m in masks]
    if images and not any(present):
        raise DataError(
            f"{mask_dir}: no masks for defect type '{mask_dir.name}' (expected {masks[0].name}, ...)"
        )
    for image, mask, ok in zip(images, masks, present):
        if not ok:
            raise DataError(f"{mask}: missing mask for defect image {image}")
    return masks


def _type_samples(category_dir: Path, defect_type: str) -> list[Sample]:
    """Samples of test/<defect_type>, with masks when the category has ground_truth."""
    images = _image_files(category_dir / "test" / defect_type)
    label = int(defect_type != GOOD)
    ground_truth = category_dir / "ground_truth"
    if label == 0 or not ground_truth.is_dir():
        return [Sample(p, label, defect_type, None) for p in images]
    masks = _mask_paths(images, ground_truth / defect_type)
    return [Sample(p, 1, defect_type, m) for p, m in zip(images, masks)]


def _test_samples(category_dir: Path) -> list[Sample]:
    folder = category_dir / "test"
    types = _subfolders(folder) if folder.is_dir() else []
    samples = [s for t in types for s in _type_samples(category_dir, t)]
    if not samples:
        raise DataError(f"no test images in {folder}")
    return samples


def list_samples(root: str | os.PathLike, category: str, split: Split) -> list[Sample]:
    """All samples of one split, sorted by type then file name; DataError on a bad layout."""
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    category_dir = _category_dir(Path(root), category)
    return _train_samples(category_dir) if split == "train" else _test_samples(category_dir)


# --------------------------------------------------------------------------- dataset


class MVTecDataset(Dataset):
    """One split of one category. Items are dicts of tensors; S = ``transform.output_size``.

    ``has_masks`` is False when the category has no ground_truth folder (masks all False then).
    With ``skip_bad``, every image and mask is decoded once here; unreadable ones are left out
    and listed in ``skipped`` as (image path, reason).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        category: str,
        split: Split = "train",
        transform: Transform = Transform(),
        skip_bad: bool = False,
    ) -> None:
        self.root = Path(root)
        self.category = category
        self.split = split
        self.transform = transform
        self.samples: list[Sample] = list_samples(self.root, category, split)
        self.has_masks: bool = (self.root / category / "ground_truth").is_dir()
        self.skipped: list[tuple[Path, str]] = []
        if skip_bad:
            self._drop_unreadable()

    def _drop_unreadable(self) -> None:
        """Decode every sample; keep the readable ones, record the others in ``skipped``."""
        kept = []
        for sample in self.samples:
            try:
                self._read(sample)
                kept.append(sample)
            except DataError as exc:
                self.skipped.append((sample.path, str(exc)))
        if not kept:
            raise DataError(
                f"{self.root / self.category}: no readable {self.split} images "
                f"({len(self.skipped)} skipped)"
            )
        self.samples = kept

    def _read(self, sample: Sample) -> tuple[Image.Image, Image.Image | None]:
        """Sample -> (RGB image, 0/255 mask or None); DataError if either is unreadable."""
        image, full_size = _decode(sample.path, self.transform.resize)
        mask = None if sample.mask_path is None else load_mask(sample.mask_path, full_size)
        return image, mask

    def _mask_tensor(self, mask: Image.Image | None) -> Tensor:
        """[S, S] bool; all False without a mask."""
        if mask is None:
            size = self.transform.output_size
            return torch.zeros((size, size), dtype=torch.bool)
        return self.transform.mask(mask)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Tensor | int | str]:
        """{"image": [3,S,S] float32, "mask": [S,S] bool, "label", "defect_type", "path": str}."""
        sample = self.samples[index]
        image, mask = self._read(sample)
        return {
            "image": self.transform.image(image),
            "mask": self._mask_tensor(mask),
            "label": sample.label,
            "defect_type": sample.defect_type,
            "path": str(sample.path),
        }


def make_loader(dataset: Dataset, batch_size: int = 8, num_workers: int = 0) -> DataLoader:
    """Batches in dataset order (no shuffling, last partial batch kept)."""
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def default_shared_root() -> Path | None:
    """The shared MVTec AD copy ($FAPM_SHARED_DATA, else ../shared/data/mvtec_ad_256), if present."""
    override = os.environ.get(SHARED_DATA_ENV)
    if override:
        candidate = Path(override).expanduser()
    else:
        candidate = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_ad_256"
    return candidate if candidate.is_dir() else None
