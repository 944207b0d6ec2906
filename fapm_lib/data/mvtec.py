"""Reader for the MVTec AD folder layout (the benchmark itself or users' own images).

Layout::

    <root>/<category>/train/good/*                       normal training images
    <root>/<category>/test/<type>/*                      type ``good`` is normal, any other a defect
    <root>/<category>/ground_truth/<type>/<stem>_mask.png   one mask per defect image

Files are recognised by extension (``IMAGE_EXTENSIONS``, case-insensitive); hidden files and
folders (name starting with ``.``) and anything else (``notes.txt``, ``Thumbs.db``) are ignored.
Samples are sorted by type, then file name. Every problem with the data is reported as a
one-line :class:`~fapm_lib.errors.DataError` naming the file or folder.

Images are decoded by :mod:`fapm_lib.data.images`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from .images import IMAGE_EXTENSIONS
from .samples import Sample, SampleDataset
from .transform import Transform

SHARED_DATA_ENV = "FAPM_SHARED_DATA"
#: Pixels per loaded batch at most, whatever ``batch_size`` (2**24 = 16.8 MP: about 200 MB of float32
#: RGB): images of a line camera (8 MP and more) load two at a time, which a bounded fit's
#: ``max_memory`` needs; images up to 1024 x 1024 keep the default ``batch_size`` (16).
MAX_BATCH_PIXELS = 2**24
GOOD = "good"
MASK_SUFFIX = "_mask.png"

Split = Literal["train", "test"]


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



class MVTecDataset(SampleDataset):
    """One split of one category. Items are dicts of tensors; ``(H, W) = transform.output_size(size)``.

    ``has_masks`` is False when the category has no ground_truth folder (masks all False then).
    With ``skip_bad``, every image and mask is decoded once here; unreadable ones are left out
    and listed in ``skipped`` as (image path, reason).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        category: str,
        split: Split = "train",
        transform: Transform | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.root = Path(root)
        self.category = category
        samples = list_samples(self.root, category, split)
        super().__init__(samples, transform, (self.root / category / "ground_truth").is_dir(), skip_bad,
                         str(self.root / category), split)


def make_loader(dataset: Dataset, batch_size: int = 8, num_workers: int = 0) -> DataLoader:
    """Batches in dataset order (no shuffling, last partial batch kept) of at most ``batch_size``
    images and at most :data:`MAX_BATCH_PIXELS` pixels (at least one image)."""
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    return DataLoader(dataset, batch_size=min(batch_size, images_per_batch(dataset)), shuffle=False,
                      num_workers=num_workers)


def images_per_batch(dataset: Dataset) -> int:
    """How many of ``dataset``'s images fit in :data:`MAX_BATCH_PIXELS`, at least 1, from the output
    size of its transform (settled from the image headers, no image decoded); a very large number
    for a dataset without one, or whose headers do not settle (its first item then raises that
    error where the loader reaches it)."""
    try:
        transform = getattr(dataset, "transform", None) if len(dataset) else None
    except DataError:
        transform = None
    if not isinstance(transform, Transform):
        return 2**31
    height, width = transform.output_size()
    return max(1, MAX_BATCH_PIXELS // (height * width))


def default_shared_root() -> Path | None:
    """The shared MVTec AD copy ($FAPM_SHARED_DATA, else ../shared/data/mvtec_ad_256), if present."""
    override = os.environ.get(SHARED_DATA_ENV)
    if override:
        candidate = Path(override).expanduser()
    else:
        candidate = Path(__file__).resolve().parents[3] / "shared" / "data" / "mvtec_ad_256"
    return candidate if candidate.is_dir() else None
