"""The pre-processing: resize the shorter side, centre-crop, normalise (images and masks)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import ConfigError
from .images import to_rgb

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


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

    def crop_geometry(self, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int], int]:
        """For an input of ``size`` (width, height): the resized size, the crop's (left, top) in
        it, and the crop side (the whole resized square without a crop)."""
        if self.crop_size is None:
            return (self.resize, self.resize), (0, 0), self.resize
        rw, rh = self._resized_size(size)
        side = self.crop_size
        return (rw, rh), (round((rw - side) / 2.0), round((rh - side) / 2.0)), side

    def box_on_input(self, box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[float, ...]:
        """A box (left, top, right, bottom) in the model's ``S x S`` view -> the same area in the
        pixels of the input of ``size`` (width, height)."""
        (rw, rh), (left, top), _ = self.crop_geometry(size)
        width, height = size
        return ((box[0] + left) * width / rw, (box[1] + top) * height / rh,
                (box[2] + left) * width / rw, (box[3] + top) * height / rh)

    def view(self, pil: Image.Image) -> np.ndarray:
        """What the model sees of an image, before normalisation: uint8 ``[S, S, 3]`` RGB."""
        return np.asarray(self._geometry(pil if pil.mode == "RGB" else to_rgb(pil)))

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

