"""Decoding image files and arrays into upright Pillow images, with one-line errors.

Rules (:func:`load_image`): EXIF orientation is applied; alpha is dropped (not composited);
16-bit grayscale is scaled to 8 bit over its full range (``round(v / 257)``). A grayscale image
(1-bit, 8 or 16-bit gray, gray with alpha: :func:`is_gray`) stays one channel ("L") where the
caller keeps it (:func:`natural`, ``keep_gray``); everything else becomes RGB. Truncated files are
errors, never padded. Every problem is a :class:`~fapm_lib.errors.DataError` naming the file.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from ..errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_IMAGE_PIXELS = 16384 * 16384

# Pillow's default limit (~89 Mpixel) is raised so 16k x 16k images open; anything larger is
# refused by load_image as a possible decompression bomb.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: Pillow modes of grayscale images (one channel of light, maybe with alpha).
GRAY_MODES = ("1", "L", "LA", *_SIXTEEN_BIT_MODES)
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

ImageInput = str | os.PathLike | Image.Image | np.ndarray


def to_rgb(pil: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha dropped, 16-bit scaled by 1/257, gray replicated."""
    if pil.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l(pil).convert("RGB")
    if pil.mode == "P":  # via RGBA so palette transparency is read, then dropped
        return pil.convert("RGBA").convert("RGB")
    return pil.convert("RGB")


def to_gray(pil: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit L: 16-bit scaled by 1/257, alpha dropped, colour to luminance."""
    if pil.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l(pil)
    if pil.mode == "L":
        return pil
    return to_rgb(pil).convert("L") if pil.mode not in ("1", "LA") else pil.convert("L")


def is_gray(pil: Image.Image) -> bool:
    """True for a grayscale image (:data:`GRAY_MODES`)."""
    return pil.mode in GRAY_MODES


def natural(pil: Image.Image) -> Image.Image:
    """A grayscale image as L, anything else as RGB (what a dataset keeps in memory)."""
    return to_gray(pil) if is_gray(pil) else to_rgb(pil)


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


def decode(path: Path, min_side: int | None, keep_gray: bool = False) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``path`` fully -> (upright image, full-resolution upright size): RGB, or L for a
    grayscale image with ``keep_gray``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as pil:
                full_size = _upright_size(pil)
                if min_side is not None:
                    _draft_for(pil, min_side)
                pil.load()
                upright = ImageOps.exif_transpose(pil)
                return (natural(upright) if keep_gray else to_rgb(upright)), full_size
    except (*_DECODE_ERRORS, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: {_problem(path, exc)}") from exc


def probe(path: Path) -> tuple[tuple[int, int], bool]:
    """An image file's upright (width, height) and whether it is grayscale, from its header
    only (nothing decoded); DataError naming the file when it cannot be opened."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as pil:
                return _upright_size(pil), is_gray(pil)
    except (*_DECODE_ERRORS, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: {_problem(path, exc)}") from exc


def load_image(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Read an image file as an upright RGB PIL image.

    With ``min_side``, a large JPEG may be decoded at reduced scale (``Image.draft``), keeping
    its shorter side >= ``2 * min_side``. Raises DataError("<path>: <problem>").
    """
    return decode(Path(path), min_side)[0]


def load_mask(path: str | os.PathLike, expected_size: tuple[int, int]) -> Image.Image:
    """Read a mask of any mode as an 'L' image of 0/255 (> 127 after conversion to L is defect).

    ``expected_size`` is its image's (width, height); a mismatch raises DataError.
    """
    mask, size = decode(Path(path), None)
    if size != tuple(expected_size):
        raise DataError(
            f"{path}: mask size {size[0]}x{size[1]} differs from its image size "
            f"{expected_size[0]}x{expected_size[1]}"
        )
    return mask.convert("L").point(lambda v: 255 if v > 127 else 0)



def as_pil(image: ImageInput) -> Image.Image:
    """A path, PIL image or numpy array (``[H, W]`` gray, ``[H, W, 1|3|4]``; uint8, uint16,
    bool or float in [0, 1]) -> PIL image, L for a grayscale one, else RGB (:func:`natural`);
    DataError naming the problem otherwise."""
    if isinstance(image, Image.Image):
        return natural(image)
    if isinstance(image, np.ndarray):
        return natural(_array_to_pil(image))
    if isinstance(image, (str, os.PathLike)):
        return decode(Path(image), None, keep_gray=True)[0]
    raise DataError(f"cannot read an image from a {type(image).__name__} (give a path, a PIL image or a numpy array)")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or min(array.shape[:2]) < 1:
        raise DataError(f"numpy image must be [H, W] or [H, W, 1|3|4], got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = ((array.astype(np.int64) + 128) // 257).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DataError("a float numpy image must hold finite values in [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise DataError(f"numpy image dtype {array.dtype} is not supported (uint8, uint16, bool or float in [0, 1])")
    return Image.fromarray(np.ascontiguousarray(array))
