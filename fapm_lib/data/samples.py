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
from .images import decode, load_mask
from .transform import Transform


@dataclass(frozen=True)
class Sample:
    """One image of a split: label 0 good, 1 defect; ``mask_path`` None when it has no mask."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None


class SampleDataset(Dataset):
    """Images of ``samples`` read with ``transform``; S = ``transform.output_size``.

    ``has_masks``: False when no sample can have a mask (masks all False then). With
    ``skip_bad``, every image and mask is decoded once here; unreadable ones are left out and
    listed in ``skipped`` as (image path, reason). ``name`` and ``split`` only word messages."""

    def __init__(self, samples: list[Sample], transform: Transform | None, has_masks: bool, skip_bad: bool = False,
                 name: str = "images", split: str = "train") -> None:
        self.transform = transform or Transform()  # None: the default transform
        self.split = split
        self.name = name
        self.samples: list[Sample] = samples
        self.has_masks = has_masks
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
            raise DataError(f"{self.name}: no readable {self.split} images ({len(self.skipped)} skipped)")
        self.samples = kept

    def _read(self, sample: Sample) -> tuple[Image.Image, Image.Image | None]:
        """Sample -> (RGB image, 0/255 mask or None); DataError if either is unreadable."""
        image, full_size = decode(sample.path, self.transform.resize)
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
