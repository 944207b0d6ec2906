"""A dataset over a list of samples (image, label, defect type, optional mask), whatever layout
listed them: the MVTec AD layout (:mod:`fapm_lib.data.mvtec`) or plain folders
(:mod:`fapm_lib.data.folders`). Items are dicts of tensors; every problem is a one-line DataError."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from .images import decode, load_mask, probe
from .transform import ASPECT_TOLERANCE, Transform, scaled_size


@dataclass(frozen=True)
class Sample:
    """One image of a split: label 0 good, 1 defect; ``mask_path`` None when it has no mask."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None


class SampleDataset(Dataset):
    """Images of ``samples`` read with ``transform`` (:attr:`transform` is it settled on this set
    by :func:`settle_geometry`: the canvas and the channels its images share).

    ``has_masks``: False when no sample can have a mask (masks all False then). With
    ``skip_bad``, every image and mask is decoded once here; unreadable ones are left out and
    listed in ``skipped`` as (image path, reason). ``name`` and ``split`` only word messages."""

    def __init__(self, samples: list[Sample], transform: Transform | None, has_masks: bool, skip_bad: bool = False,
                 name: str = "images", split: str = "train") -> None:
        self.given_transform = transform or Transform()  # None: the default transform
        self.split = split
        self.name = name
        self.samples: list[Sample] = samples
        self.has_masks = has_masks
        self.skipped: list[tuple[Path, str]] = []
        self._settled: Transform | None = None
        if skip_bad:
            self._drop_unreadable()

    @property
    def transform(self) -> Transform:
        """The transform fixed to this set's geometry (computed from the image headers on first use)."""
        if self._settled is None:
            self._settled = settle_geometry(self.given_transform, [s.path for s in self.samples], self.name)
        return self._settled

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Tensor | int | str]:
        """{"image": [C, H, W] float32, "mask": [H, W] bool, "label", "defect_type", "path": str}."""
        sample = self.samples[index]
        transform = self.transform  # settled first: its errors name their own file
        image, mask = self._read(sample)
        try:
            pixels = transform.image(image)
        except DataError as exc:
            raise DataError(f"{sample.path}: {exc}") from None
        return {
            "image": pixels,
            "mask": torch.zeros(pixels.shape[-2:], dtype=torch.bool) if mask is None else transform.mask(mask),
            "label": sample.label,
            "defect_type": sample.defect_type,
            "path": str(sample.path),
        }

    def _read(self, sample: Sample) -> tuple[Image.Image, Image.Image | None]:
        """Sample -> (image, L for a grayscale one, else RGB; 0/255 mask or None); DataError if
        either is unreadable."""
        image, full_size = decode(sample.path, self.given_transform.resize, keep_gray=True)
        mask = None if sample.mask_path is None else load_mask(sample.mask_path, full_size)
        return image, mask

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
            raise DataError(f"{self.name}: no readable {self.split} images ({len(self.skipped)} skipped)")
        self.samples = kept


def settle_geometry(transform: Transform, paths: list[Path], name: str = "images") -> Transform:
    """``transform`` fixed to a set of images, so that every item has one shape. The rule:

    - channels (unless set): 1 when every image is grayscale, else 3 (gray images replicated);
    - native canvas (unless set): the most common size among the images (ties: the first one's)
      times ``scale``; an image of another size with the same aspect ratio (within
      :data:`~fapm_lib.data.transform.ASPECT_TOLERANCE`) is resized to it; another aspect ratio
      is a DataError naming the file.

    Only the image headers are read."""
    need_canvas = transform.native and transform.canvas is None
    if not paths or (transform.channels is not None and not need_canvas):
        return transform
    probed = [probe(Path(p)) for p in paths]
    channels = transform.channels or (1 if all(gray for _, gray in probed) else 3)
    canvas = transform.canvas
    if need_canvas:
        sizes = [size for size, _ in probed]
        common = max(dict.fromkeys(sizes), key=sizes.count)  # most common; ties: first seen
        for path, (width, height) in zip(paths, sizes):
            if abs((width / height) / (common[0] / common[1]) - 1.0) > ASPECT_TOLERANCE:
                raise DataError(f"{path}: {width}x{height} has another aspect ratio than the other images of {name} "
                                f"({common[0]}x{common[1]}); a model scores whole images of one framing: crop or "
                                "split the set")
        canvas = scaled_size(common, transform.scale)
    return transform.with_canvas(canvas, channels)


def sample_paths(data: object) -> list[str] | None:
    """The image paths, in order, of a dataset of samples (also behind a DataLoader or a
    ``torch.utils.data.Subset``); None for anything else (tensors, other datasets)."""
    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    if isinstance(data, torch.utils.data.Subset):
        inner = sample_paths(data.dataset)
        return None if inner is None else [inner[i] for i in data.indices]
    samples = getattr(data, "samples", None)
    if isinstance(data, Dataset) and isinstance(samples, list) and all(isinstance(s, Sample) for s in samples):
        return [str(Path(s.path).resolve()) for s in samples]
    return None
