"""The pre-processing: an image (any size, gray or colour) -> the network's input, in one of two
geometries, and the same geometry for masks and for mapping results back onto the input.

- **Native** (the default, ``resize`` None): the whole image at its own resolution, times
  ``scale`` (1: every pixel; 0.5: half the side, a quarter of the time). A model works on one
  *canvas* (height, width): the training images' size times ``scale``. An image of the canvas's
  aspect ratio (within :data:`ASPECT_TOLERANCE`) is resized to it, which is the identity for the
  training images' own size; any other aspect is refused with one line (never cropped, padded or
  squashed silently). ``canvas`` None: the image's own size times ``scale``.
- **The paper's protocol** (``resize`` set): the shorter side resized to ``resize`` (bilinear,
  aspect kept), then the centre ``crop_size`` square; ``crop_size`` None squashes the image to
  ``resize x resize``. What the MVTec AD papers use; the pixels outside the crop are not seen.

Channels: a grayscale image (1-bit, 8-bit, 16-bit gray, gray with alpha) stays one channel
(``channels`` 1), normalised with the first channel's mean and std; the model turns it into the
network's three channels itself, exactly (:func:`fapm_lib.method.features.expand_gray`), so one
channel is held in memory and enters the exported graph. ``channels`` 3: RGB (a gray image is
replicated); None: as each image is.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import ConfigError, DataError
from .images import is_gray, to_gray, to_rgb

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Largest relative difference of aspect ratio (width / height) between an image and the canvas
#: that is resized to the canvas; larger differences are refused. 1 %: the rounding of a
#: rescaled image's sides, never a different framing of the part.
ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True)
class Placement:
    """Where the model's view lies on an input of ``size`` (width, height): the input is resized
    to ``resized`` (width, height), and the view is the window of ``view`` (width, height) at
    ``offset`` (left, top) in it."""

    resized: tuple[int, int]
    offset: tuple[int, int]
    view: tuple[int, int]


@dataclass(frozen=True)
class Transform:
    """Image -> normalised float32 tensor ``[C, H, W]`` (see the module's rules)."""

    resize: int | None = None
    crop_size: int | None = None
    scale: float = 1.0
    canvas: tuple[int, int] | None = None  # (height, width), native only
    channels: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.resize is not None and self.resize < 1:
            raise ConfigError(f"resize must be >= 1, got {self.resize}")
        if self.crop_size is not None and (self.resize is None or not 1 <= self.crop_size <= self.resize):
            raise ConfigError(f"crop_size must be in 1..resize ({self.resize}), got {self.crop_size}")
        if not 0.0 < self.scale <= 1.0:
            raise ConfigError(f"scale must be in (0, 1], got {self.scale}")
        if self.resize is not None and (self.scale != 1.0 or self.canvas is not None):
            raise ConfigError("scale and canvas act at native resolution; with resize the protocol sets the size")
        if self.canvas is not None and (len(self.canvas) != 2 or min(self.canvas) < 1):
            raise ConfigError(f"canvas must be (height, width) >= 1, got {self.canvas}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1, 3 or None, got {self.channels}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean and std need 3 values each, std > 0; got {self.mean}, {self.std}")

    @property
    def native(self) -> bool:
        """True for the native geometry (no resize / crop protocol)."""
        return self.resize is None

    def with_canvas(self, canvas: tuple[int, int] | None, channels: int | None) -> "Transform":
        """The same transform fixed to a model's ``canvas`` (height, width) and ``channels``."""
        return replace(self, canvas=None if canvas is None else (int(canvas[0]), int(canvas[1])), channels=channels)

    def output_size(self, size: tuple[int, int] | None = None) -> tuple[int, int]:
        """``(height, width)`` of the output for an input of ``size`` (width, height); a protocol
        output or a fixed canvas does not depend on it."""
        if not self.native:
            side = self.resize if self.crop_size is None else self.crop_size
            return side, side
        if self.canvas is not None:
            return self.canvas
        if size is None:
            raise ConfigError("a native transform without a canvas needs the input's size")
        return scaled_size(size, self.scale)

    def image(self, pil: Image.Image) -> Tensor:
        """An image (any mode and size) -> normalised float32 ``[C, H, W]``; DataError (one line,
        without the file's name: the caller adds it) for an aspect the canvas refuses."""
        channels = self.channels or (1 if is_gray(pil) else 3)
        converted = to_gray(pil) if channels == 1 else to_rgb(pil)
        pixels = np.asarray(self._geometry(converted), dtype=np.float32) / 255.0
        x = torch.from_numpy(pixels.reshape(pixels.shape[0], pixels.shape[1], -1)).permute(2, 0, 1)
        mean = torch.tensor(self.mean[:channels], dtype=torch.float32).view(channels, 1, 1)
        std = torch.tensor(self.std[:channels], dtype=torch.float32).view(channels, 1, 1)
        return ((x - mean) / std).contiguous()

    def mask(self, pil: Image.Image) -> Tensor:
        """Mask (values 0..255, > 127 is defect) -> bool ``[H, W]``, the geometry of :meth:`image`."""
        unit = np.asarray(pil.convert("L"), dtype=np.float32) / 255.0
        resized = self._geometry(Image.fromarray(unit))
        return torch.from_numpy(np.asarray(resized) > 0.5)

    def view(self, pil: Image.Image) -> np.ndarray:
        """What the model sees of an image, before normalisation, for display: uint8 ``[H, W, 3]``."""
        return np.asarray(self._geometry(to_rgb(pil)))

    def placement(self, size: tuple[int, int]) -> Placement:
        """Where the view lies on an input of ``size`` (width, height); DataError for an aspect
        the canvas refuses."""
        if self.native:
            height, width = self.output_size(size)
            self.check_aspect(size)
            return Placement((width, height), (0, 0), (width, height))
        if self.crop_size is None:
            return Placement((self.resize, self.resize), (0, 0), (self.resize, self.resize))
        rw, rh = self._resized_size(size)
        side = self.crop_size
        return Placement((rw, rh), (round((rw - side) / 2.0), round((rh - side) / 2.0)), (side, side))

    def box_on_input(self, box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[float, ...]:
        """A box (left, top, right, bottom) in the model's view -> the same area in the pixels of
        the input of ``size`` (width, height)."""
        place = self.placement(size)
        (rw, rh), (left, top) = place.resized, place.offset
        width, height = size
        return ((box[0] + left) * width / rw, (box[1] + top) * height / rh,
                (box[2] + left) * width / rw, (box[3] + top) * height / rh)

    def check_aspect(self, size: tuple[int, int]) -> None:
        """DataError unless an input of ``size`` (width, height) has the canvas's aspect ratio."""
        if self.canvas is None:
            return
        width, height = size
        c_height, c_width = self.canvas
        if abs((width / height) / (c_width / c_height) - 1.0) > ASPECT_TOLERANCE:
            raise DataError(f"{width}x{height} image: its aspect ratio differs from the model's canvas "
                            f"({c_width}x{c_height}) by more than {ASPECT_TOLERANCE:.0%}; the model scores whole "
                            "images of the aspect it was fitted on (crop or fit a model for this framing)")

    def _geometry(self, pil: Image.Image) -> Image.Image:
        """The image resized (and cropped) to the view."""
        place = self.placement(pil.size)
        resized = pil if place.resized == pil.size else pil.resize(place.resized, Image.Resampling.BILINEAR)
        if place.view == place.resized:
            return resized
        left, top = place.offset
        return resized.crop((left, top, left + place.view[0], top + place.view[1]))

    def _resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) after resizing the shorter side to ``resize``; torchvision's rounding."""
        width, height = size
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(height, width)`` of an input of ``size`` (width, height) times ``scale`` (at least 1)."""
    width, height = size
    return max(1, round(height * scale)), max(1, round(width * scale))
