"""Images in plain folders (any depth), as ``fapm predict``, ``fapm fit --good`` and
``predict_folder`` read them, and labelled plain folders as a dataset (:class:`FolderDataset`):
``--good DIR`` (normal images), ``--defect DIR`` (defective images) and ``--masks DIR`` (their
masks), any depth, any mix of image formats.

Rules, exactly:

- files are images by extension (``IMAGE_EXTENSIONS``, case-insensitive, any mix); hidden
  files and folders (a name starting with ``.``) are ignored; every other file is *skipped* and
  listed by :func:`scan_folder` (``notes.txt``, ``Thumbs.db``); paths are sorted;
- in a :class:`FolderDataset`, the skipped files are listed in ``skipped`` as
  ``(path, "<path>: not an image file")``;
- label 0 for the images under ``good``, 1 under ``defect``; the defect type is the first folder
  below ``defect`` (``defect/scratch/7.jpg``: ``scratch``), ``defect`` for files directly in it;
- the mask of ``defect/<rel>/<stem>.<ext>`` is ``masks/<rel>/<stem>.png`` or
  ``masks/<rel>/<stem>_mask.png`` (the same relative folder; the MVTec ``ground_truth`` folder
  of one category fits as it is); with ``masks`` given, every defect image needs exactly one,
  else a one-line DataError names the image and the names looked for; good images have none.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, DataError
from .images import IMAGE_EXTENSIONS
from .samples import Sample, SampleDataset
from .transform import Transform

GOOD = "good"
DEFECT = "defect"
MASK_NAMES = ("{stem}.png", "{stem}_mask.png")


class FolderDataset(SampleDataset):
    """Labelled plain folders as a dataset (the items of :class:`~fapm_lib.data.mvtec.MVTecDataset`).

    >>> train = FolderDataset(good="parts/ok", transform=model.transform)
    >>> test = FolderDataset(good="new/ok", defect="new/ng", masks="new/ng_masks", split="test")

    ``skipped`` lists the non-image files, then (with ``skip_bad``) the unreadable images."""

    def __init__(self, good: str | os.PathLike | None = None, defect: str | os.PathLike | None = None,
                 masks: str | os.PathLike | None = None, transform: Transform | None = None,
                 skip_bad: bool = False, split: str = "train") -> None:
        samples, not_images = folder_samples(good, defect, masks)
        name = ", ".join(str(f) for f in (good, defect) if f is not None)
        super().__init__(samples, transform, masks is not None, skip_bad, name, split)
        self.skipped = not_images + self.skipped


def folder_samples(good: str | os.PathLike | None, defect: str | os.PathLike | None = None,
                   masks: str | os.PathLike | None = None) -> tuple[list[Sample], list[tuple[Path, str]]]:
    """The samples of labelled folders (good first, then defects, each sorted) and the skipped
    non-image files ``(path, reason)``; ConfigError / DataError (one line) on bad arguments."""
    if good is None and defect is None:
        raise ConfigError("give a folder of good images (--good), of defective ones (--defect), or both")
    if masks is not None and defect is None:
        raise ConfigError("--masks needs --defect: masks belong to defective images")
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    for folder, label in ((good, 0), (defect, 1)):
        if folder is None:
            continue
        folder = Path(folder)
        images, others = scan_folder(folder)
        skipped += [(p, f"{p}: not an image file") for p in others]
        if not images:
            raise DataError(f"{folder}: no images found")
        if label == 0:
            samples += [Sample(p, 0, GOOD, None) for p in images]
        else:
            samples += [Sample(p, 1, _defect_type(p, folder),
                               None if masks is None else mask_for(p, folder, Path(masks)))
                        for p in images]
    return samples, skipped


def mask_for(image: Path, defect_dir: Path, mask_dir: Path) -> Path:
    """The one mask of a defect image under ``mask_dir`` (see the module's rules)."""
    folder = mask_dir / image.parent.relative_to(defect_dir)
    candidates = [folder / pattern.format(stem=image.stem) for pattern in MASK_NAMES]
    present = [c for c in candidates if c.is_file()]
    if not present:
        raise DataError(f"{image}: no mask (looked for {candidates[0]} and {candidates[1].name})")
    if len(present) > 1:
        raise DataError(f"{image}: two masks match ({present[0]} and {present[1].name}); keep one")
    return present[0]


def _defect_type(image: Path, defect_dir: Path) -> str:
    rel = image.relative_to(defect_dir).parts
    return rel[0] if len(rel) > 1 else DEFECT


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Visible image files under ``folder`` (recursive), sorted; DataError when there are none."""
    images, _ = scan_folder(folder)
    if not images:
        raise DataError(f"{folder}: no images found")
    return images


def scan_folder(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """``(images, other files)`` under ``folder`` (recursive, visible files only), each sorted;
    DataError when the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    return images, [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
